"""Analyses of run directories: ``lyapunov``, ``hessian``, ``robustness``, ``compare``."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.table import Table

from ._console import console, data_dir_arg

#: the noise levels of ``robustness`` when none are given: those of
#: :func:`lipschitz_rnn.runs.analyses.robustness_run` (a test checks they agree; not imported
#: here, which would load torch for every command)
INPUT_SIGMAS = (0.0, 0.01, 0.05, 0.1, 0.2, 0.5)
WEIGHT_SIGMAS = (0.0, 0.001, 0.005, 0.01, 0.05, 0.1)


def _cmd_lyapunov(args: argparse.Namespace) -> int:
    from ..runs.analyses import lyapunov_evolution, lyapunov_run

    if args.evolution:
        path = lyapunov_evolution(args.run_dir)
        console.print(f"wrote {path}")
        return 0
    d = lyapunov_run(
        args.run_dir,
        batch=args.batch,
        steps=args.steps,
        k=args.k,
        warmup=args.warmup,
        data_dir=args.data_dir,
    )
    s = d["summary"]
    console.print(
        f"max exponent {s['max_exponent']:.5f}   positive exponents {s['num_positive']}   "
        f"Kaplan-Yorke dimension {s['kaplan_yorke_dimension']:.3f}"
    )
    console.print(f"wrote {Path(args.run_dir) / 'lyapunov.json'} and lyapunov.png")
    return 0


def _cmd_hessian(args: argparse.Namespace) -> int:
    from ..runs.analyses import hessian_run

    what = f"top {args.top_k} eigenvalue(s), the smallest, the trace" + (
        "" if args.no_density else " and the spectral density"
    )
    console.print(
        f"Hessian of the test loss ({args.batches} batch(es) of {args.batch_size}) at the best "
        f"checkpoint: {what}, by Hessian-vector products"
    )
    with console.status("Hessian: loading the run") as status:
        d = hessian_run(
            args.run_dir,
            n_batches=args.batches,
            batch_size=args.batch_size,
            top_k=args.top_k,
            density=not args.no_density,
            seed=args.seed,
            data_dir=args.data_dir,
            progress=status.update,
        )
    console.print(
        f"lambda_max {d['eigenvalues'][0]:.5g}   lambda_min {d['min_eigenvalue']:.5g}   "
        f"trace {d['trace']:.5g} +- {d['trace_stderr']:.2g}   condition {d['condition_number']}"
    )
    console.print(f"wrote {Path(args.run_dir) / 'hessian.json'}")
    return 0


def _cmd_robustness(args: argparse.Namespace) -> int:
    from ..runs.analyses import robustness_run

    d = robustness_run(
        args.run_dir,
        input_sigmas=args.input_sigmas,
        weight_sigmas=args.weight_sigmas,
        seeds=tuple(range(args.seeds)),
        n_batches=args.batches,
        batch_size=args.batch_size,
        data_dir=args.data_dir,
    )
    sub = d["subset"]
    seen = sub.get("sequences_used", sub.get("tokens_used"))
    total = sub.get("sequences_total", sub.get("tokens_total"))
    unit = "sequences" if "sequences_used" in sub else "tokens"
    if seen < total:
        console.print(
            f"on the first {seen} of {total} test {unit} (--batches 0 for all): the sigma = 0 "
            "value can differ from the run's test metric"
        )
    for kind, c in d["curves"].items():
        table = Table(title=f"{kind} noise ({d['metric']})")
        table.add_column("sigma")
        table.add_column("mean +- std")
        for s_, m, sd in zip(c["sigmas"], c["mean"], c["std"], strict=True):
            table.add_row(f"{s_:g}", f"{m:.4f} +- {sd:.4f}")
        console.print(table)
    console.print(f"wrote {Path(args.run_dir) / 'robustness.json'}")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from ..runs.analyses import compare_runs

    md, _ = compare_runs(args.run_dirs, out=args.out)
    console.print(md)
    if args.out:
        console.print(f"wrote {Path(args.out) / 'compare.md'} and compare.csv")
    return 0


def add_commands(sub) -> None:
    fmt = argparse.ArgumentDefaultsHelpFormatter
    s = sub.add_parser(
        "lyapunov", help="Lyapunov spectrum of a run's best checkpoint", formatter_class=fmt
    )
    s.add_argument("run_dir")
    s.add_argument("--batch", type=int, default=16, help="test sequences driving the network")
    s.add_argument("--steps", type=int, default=None, help="time steps (default: whole sequence)")
    s.add_argument("--k", type=int, default=None, help="exponents (default: the full spectrum)")
    s.add_argument("--warmup", type=int, default=0, help="steps run before averaging starts")
    s.add_argument(
        "--evolution",
        action="store_true",
        help="plot the spectra logged during training (train --lyapunov-every)",
    )
    data_dir_arg(s)
    s.set_defaults(func=_cmd_lyapunov)

    s = sub.add_parser(
        "hessian",
        help="Hessian spectrum of a run's test loss",
        description="Top eigenvalues (Lanczos), smallest eigenvalue, Hutchinson trace and the "
        "spectral density (stochastic Lanczos quadrature) of the Hessian of the test loss at "
        "the best checkpoint, matrix-free. Writes hessian.json and hessian.png into the run.",
        formatter_class=fmt,
    )
    s.add_argument("run_dir")
    s.add_argument("--batches", type=int, default=2, help="test batches the loss averages over")
    s.add_argument("--batch-size", type=int, default=64, help="sequences per batch")
    s.add_argument("--top-k", type=int, default=1, help="largest eigenvalues to compute")
    s.add_argument("--no-density", action="store_true", help="skip the spectral density")
    s.add_argument("--seed", type=int, default=0, help="seed of the random probe vectors")
    data_dir_arg(s)
    s.set_defaults(func=_cmd_hessian)

    s = sub.add_parser(
        "robustness",
        help="test metric under input and weight noise",
        description="The test metric of the best checkpoint under Gaussian input noise (std "
        "sigma) and relative Gaussian weight noise (each parameter times 1 + sigma N(0, 1)), "
        "mean and std over noise seeds, on the first BATCHES x BATCH_SIZE test sequences "
        "(--batches 0: the whole test set). Writes robustness.json and robustness.png.",
        formatter_class=fmt,
    )
    s.add_argument("run_dir")
    s.add_argument(
        "--input-sigmas", type=float, nargs="+", default=list(INPUT_SIGMAS),
        help="input noise levels",
    )
    s.add_argument(
        "--weight-sigmas", type=float, nargs="+", default=list(WEIGHT_SIGMAS),
        help="relative weight noise levels",
    )
    s.add_argument("--seeds", type=int, default=3, help="number of noise seeds")
    s.add_argument(
        "--batches", type=int, default=4, help="test batches to use (0: the whole test set)"
    )
    s.add_argument("--batch-size", type=int, default=256, help="sequences per batch")
    data_dir_arg(s)
    s.set_defaults(func=_cmd_robustness)

    s = sub.add_parser(
        "compare", help="Table-3-style comparison of runs (markdown and CSV)", formatter_class=fmt
    )
    s.add_argument("run_dirs", nargs="+")
    s.add_argument("--out", default=None, help="folder for compare.md and compare.csv")
    s.set_defaults(func=_cmd_compare)
