"""The ``lipschitz-rnn`` command line. Thin: parse arguments, call the library, render with rich."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

console = Console()


# --------------------------------------------------------------------------------------------
# listings
def _cmd_models(args: argparse.Namespace) -> int:
    from .models import MODELS

    table = Table(title="models (lipschitz_rnn.models.build)")
    table.add_column("name")
    table.add_column("description")
    for name, (_, desc) in MODELS.items():
        table.add_row(name, desc)
    console.print(table)
    return 0


def _cmd_presets(args: argparse.Namespace) -> int:
    from .train.config import list_presets

    table = Table(title="presets (lipschitz-rnn train --preset NAME)")
    table.add_column("name", no_wrap=True)
    table.add_column("description")
    for name, desc in list_presets().items():
        table.add_row(name, desc)
    console.print(table)
    return 0


# --------------------------------------------------------------------------------------------
# training
class _StopOnSigint:
    """First Ctrl-C asks the loop to stop at the next step (it then saves a checkpoint)."""

    def __init__(self) -> None:
        self.requested = False

    def __enter__(self):
        self._old = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:  # second Ctrl-C: give up at once
            raise KeyboardInterrupt
        self.requested = True
        console.print("[yellow]stopping after this step (Ctrl-C again to abort)...[/]")

    def __exit__(self, *exc):
        signal.signal(signal.SIGINT, self._old)
        return False

    def __call__(self) -> bool:
        return self.requested


def _process_settings() -> str:
    """Process-wide CPU settings for training and benchmarking (the CLI owns the process; the
    library never changes them). Returns a one-line description."""
    import torch

    from .bench import reuse_freed_memory

    # let glibc reuse freed memory across batches instead of paying fresh page faults for every
    # large (T, B, H) tensor (about a quarter of a sMNIST step on CPU)
    malloc = reuse_freed_memory()
    # denormal floats make CPU kernels crawl (an LSTM's backward over 784 steps ~7x slower);
    # flushing them to zero is the usual training setting and changes nothing measurable
    torch.set_flush_denormal(True)
    return f"malloc reuse {malloc}, flush denormal True, torch threads {torch.get_num_threads()}"


def run_training(config, out, *, data_dir=None, resume=False, force=False) -> dict:
    """Train with a tqdm progress bar and Ctrl-C handling; print a summary."""
    from tqdm import tqdm

    from .train.loop import train

    _process_settings()
    bar = {"bar": None, "epoch": None}

    def progress(p) -> None:
        if bar["epoch"] != p.epoch:
            if bar["bar"] is not None:
                bar["bar"].close()
            bar["bar"] = tqdm(
                total=p.steps_per_epoch,
                desc=f"epoch {p.epoch}",
                unit="batch",
                initial=p.step - 1,
                leave=False,
                dynamic_ncols=True,
                disable=None,
            )  # no bar when stderr is not a terminal
            bar["epoch"] = p.epoch
        b = bar["bar"]
        b.update(1)
        b.set_postfix(
            loss=f"{p.loss:.4f}", **{p.metric_name: f"{p.metric:.4f}"}, seq_s=f"{p.seq_per_s:.0f}"
        )

    def epoch_end(rec: dict) -> None:
        if bar["bar"] is not None:
            bar["bar"].close()
            bar["bar"] = None
            bar["epoch"] = None
        parts = [f"epoch {rec['epoch']:3d}"]
        for k, v in rec.items():
            if k in ("epoch", "lyapunov"):
                continue
            parts.append(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}")
        if "lyapunov" in rec:
            parts.append(f"lambda_max {rec['lyapunov']['max']:.4f}")
        console.print("  ".join(parts))

    with _StopOnSigint() as stop:
        results = train(
            config,
            out,
            data_dir=data_dir,
            resume=resume,
            force=force,
            progress=progress,
            should_stop=stop,
            epoch_end=epoch_end,
        )
    if bar["bar"] is not None:
        bar["bar"].close()
    console.print(
        f"[bold]test[/] {json.dumps(results['test'])}  "
        f"(best valid epoch {results['best_valid']['epoch']}, "
        f"{results['num_parameters']} parameters, {results['wall_time_s']:.1f} s)"
    )
    console.print(f"run directory: {out}")
    return results


def _cmd_train(args: argparse.Namespace) -> int:
    from .train.config import parse_set, resolve_config

    if args.resume:
        run_training(None, args.resume, data_dir=args.data_dir, resume=True)
        return 0
    if args.out is None:
        raise ValueError("--out RUN_DIR is required (or --resume RUN_DIR)")
    if args.preset is None and (args.task is None or args.model is None):
        raise ValueError("give --task and --model, or --preset")
    overrides = parse_set(args.set or [])
    if args.lyapunov_every is not None:
        overrides["lyapunov_every"] = args.lyapunov_every
    config = resolve_config(
        task=args.task, model=args.model, preset=args.preset, overrides=overrides
    )
    _check_names(config)
    run_training(config, args.out, data_dir=args.data_dir, force=args.force)
    return 0


def _check_names(config) -> None:
    from .data import TASKS
    from .models import MODELS

    if config.task not in TASKS:
        raise ValueError(f"--task must be one of {sorted(TASKS)}, got {config.task!r}")
    if config.model not in MODELS:
        raise ValueError(f"--model must be one of {sorted(MODELS)}, got {config.model!r}")


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from .train.loop import evaluate_run

    res = evaluate_run(args.run_dir, data_dir=args.data_dir, split=args.split)
    console.print(json.dumps(res))
    return 0


def _cmd_certify(args: argparse.Namespace) -> int:
    from .stability import certify
    from .train.loop import load_run

    _, _, model = load_run(args.run_dir, data_dir=args.data_dir, which=args.checkpoint)
    for cert in certify(model):
        console.print(str(cert))
    return 0


def _cmd_quickstart(args: argparse.Namespace) -> int:
    from .stability import certify
    from .train.config import resolve_config
    from .train.loop import load_run

    overrides = {"seed": args.seed}
    if args.epochs is not None:
        overrides["epochs"] = args.epochs
    config = resolve_config(preset="digits-lipschitz", overrides=overrides)
    console.print(f"[bold]quick start[/]: {config.description}")
    results = run_training(config, args.out, force=True)
    acc = results["test"]["accuracy"]
    console.print(f"[bold green]test accuracy {100 * acc:.2f}%[/]")
    _, _, model = load_run(args.out)
    console.print("[bold]stability certificate of the trained layer[/]")
    for cert in certify(model):
        console.print(str(cert))
    return 0


# --------------------------------------------------------------------------------------------
# analysis of run directories
def _cmd_lyapunov(args: argparse.Namespace) -> int:
    from .train.analyse import lyapunov_evolution, lyapunov_run

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
    from .train.analyse import hessian_run

    d = hessian_run(
        args.run_dir,
        n_batches=args.batches,
        batch_size=args.batch_size,
        top_k=args.top_k,
        density=not args.no_density,
        seed=args.seed,
        data_dir=args.data_dir,
    )
    console.print(
        f"lambda_max {d['eigenvalues'][0]:.5g}   lambda_min {d['min_eigenvalue']:.5g}   "
        f"trace {d['trace']:.5g} +- {d['trace_stderr']:.2g}   condition {d['condition_number']}"
    )
    console.print(f"wrote {Path(args.run_dir) / 'hessian.json'}")
    return 0


def _cmd_robustness(args: argparse.Namespace) -> int:
    from .train.analyse import robustness_run

    kw = {}
    if args.input_sigmas:
        kw["input_sigmas"] = args.input_sigmas
    if args.weight_sigmas:
        kw["weight_sigmas"] = args.weight_sigmas
    d = robustness_run(
        args.run_dir,
        seeds=tuple(range(args.seeds)),
        n_batches=args.batches,
        batch_size=args.batch_size,
        data_dir=args.data_dir,
        **kw,
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
    from .train.analyse import compare_runs

    md, _ = compare_runs(args.run_dirs, out=args.out)
    console.print(md)
    if args.out:
        console.print(f"wrote {Path(args.out) / 'compare.md'} and compare.csv")
    return 0


def _device_name(device: str) -> str:
    import os
    import platform

    import torch

    if device == "cuda":
        return torch.cuda.get_device_name()
    try:
        with open("/proc/cpuinfo") as fh:
            model = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor() or platform.machine()
    return f"{model} ({os.cpu_count()} CPUs)"


def _cmd_bench(args: argparse.Namespace) -> int:
    import torch

    from .bench import epoch_estimate, format_epoch, format_table, run_bench

    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: CUDA is not available on this machine")
    if args.repeats < 1:
        raise ValueError(f"--repeats must be >= 1, got {args.repeats}")
    from .bench import MODELS
    from .models import _native, fused_backend

    models = MODELS if args.models is None else tuple(m.strip() for m in args.models.split(","))
    settings = _process_settings()
    with console.status("timing ...") as status, fused_backend(args.backend):
        kernels = "torch"
        if args.device == "cpu" and args.backend != "torch":  # "native" raises in run_bench
            status.update("building the native kernels (once) ...")
            kernels = "native" if _native.load() is not None else "torch"
            kernels += f" [{_native.native_status()}]"
        rows = run_bench(
            device=args.device,
            quick=args.quick,
            repeats=args.repeats,
            solver=args.solver,
            models=models,
            memory=not args.no_memory,
            progress=lambda m: status.update(f"timing {m} ..."),
        )
        epoch = (
            epoch_estimate(args.device, repeats=args.repeats, solver=args.solver)
            if args.epoch
            else None
        )
    settings += f", fused kernels: {kernels}"
    console.print(format_table(rows), markup=False, highlight=False, soft_wrap=True)
    if epoch is not None:
        console.print("\n" + format_epoch(epoch), markup=False, highlight=False, soft_wrap=True)
    console.print(
        f"\ntorch {torch.__version__} on {_device_name(args.device)}, {settings}",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    return 0


# --------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lipschitz-rnn",
        description="Lipschitz RNNs and recurrent networks as dynamical systems.",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = p.add_subparsers(dest="command", required=True)

    def data_dir_arg(s):
        s.add_argument(
            "--data-dir",
            default=None,
            help="data directory (default: $LIPSCHITZ_RNN_DATA, else ~/.cache/lipschitz_rnn)",
        )

    s = sub.add_parser("models", help="list the models of the registry")
    s.set_defaults(func=_cmd_models)
    s = sub.add_parser("presets", help="list the training presets")
    s.set_defaults(func=_cmd_presets)

    s = sub.add_parser("train", help="train a model on a task")
    s.add_argument("--task")
    s.add_argument("--model")
    s.add_argument("--preset")
    s.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a setting (model.eps=0.1, task.length=200, lr=0.001, ...)",
    )
    s.add_argument("--out", help="run directory")
    s.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run")
    s.add_argument("--force", action="store_true", help="overwrite an existing run directory")
    s.add_argument(
        "--lyapunov-every",
        type=int,
        default=None,
        metavar="E",
        help="log a Lyapunov spectrum summary every E epochs",
    )
    data_dir_arg(s)
    s.set_defaults(func=_cmd_train)

    s = sub.add_parser("evaluate", help="re-compute a run's test metrics from its best checkpoint")
    s.add_argument("run_dir")
    s.add_argument("--split", default="test", choices=["train", "valid", "test"])
    data_dir_arg(s)
    s.set_defaults(func=_cmd_evaluate)

    s = sub.add_parser("certify", help="stability certificate of a run's Lipschitz cells")
    s.add_argument("run_dir")
    s.add_argument("--checkpoint", default="best", choices=["best", "last"])
    data_dir_arg(s)
    s.set_defaults(func=_cmd_certify)

    s = sub.add_parser("lyapunov", help="Lyapunov spectrum of a run's best checkpoint")
    s.add_argument("run_dir")
    s.add_argument("--batch", type=int, default=16, help="test sequences driving the network")
    s.add_argument("--steps", type=int, default=None, help="time steps (default: whole sequence)")
    s.add_argument("--k", type=int, default=None, help="exponents (default: the full spectrum)")
    s.add_argument("--warmup", type=int, default=0)
    s.add_argument(
        "--evolution",
        action="store_true",
        help="plot the spectra logged during training (train --lyapunov-every)",
    )
    data_dir_arg(s)
    s.set_defaults(func=_cmd_lyapunov)

    s = sub.add_parser("hessian", help="Hessian spectrum of a run's test loss")
    s.add_argument("run_dir")
    s.add_argument("--batches", type=int, default=2)
    s.add_argument("--batch-size", type=int, default=64)
    s.add_argument("--top-k", type=int, default=1)
    s.add_argument("--no-density", action="store_true")
    s.add_argument("--seed", type=int, default=0)
    data_dir_arg(s)
    s.set_defaults(func=_cmd_hessian)

    s = sub.add_parser("robustness", help="test metric under input and weight noise")
    s.add_argument("run_dir")
    s.add_argument("--input-sigmas", type=float, nargs="+")
    s.add_argument("--weight-sigmas", type=float, nargs="+")
    s.add_argument("--seeds", type=int, default=3, help="number of noise seeds")
    s.add_argument("--batches", type=int, default=4)
    s.add_argument("--batch-size", type=int, default=256)
    data_dir_arg(s)
    s.set_defaults(func=_cmd_robustness)

    s = sub.add_parser("compare", help="Table-3-style comparison of runs (markdown and CSV)")
    s.add_argument("run_dirs", nargs="+")
    s.add_argument("--out", default=None, help="folder for compare.md and compare.csv")
    s.set_defaults(func=_cmd_compare)

    s = sub.add_parser("bench", help="time the Lipschitz layer against torch's RNNs")
    s.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    s.add_argument("--quick", action="store_true", help="a smaller grid")
    s.add_argument("--repeats", type=int, default=5)
    s.add_argument(
        "--epoch", action="store_true", help="also extrapolate one sMNIST training epoch"
    )
    s.add_argument(
        "--backend",
        choices=["auto", "native", "torch"],
        default="auto",
        help="kernels of the fused Lipschitz path on CPU (default: native where it builds)",
    )
    s.add_argument("--solver", default="euler", choices=["euler", "rk2", "heun"])
    s.add_argument(
        "--no-memory",
        action="store_true",
        help="skip the CPU peak-memory column (one fresh process per row)",
    )
    s.add_argument(
        "--models",
        default=None,
        help="comma-separated rows (default: lipschitz-fused,lipschitz-loop,nn.RNN,nn.LSTM; "
        "also lipschitz-fused-torch: the fused path on its PyTorch kernels)",
    )
    s.set_defaults(func=_cmd_bench)

    s = sub.add_parser("quickstart", help="train a Lipschitz RNN on bundled digits (no download)")
    s.add_argument("--out", default="runs/quickstart", help="run directory")
    s.add_argument("--epochs", type=int, default=None, help="override the number of epochs")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=_cmd_quickstart)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    logging.captureWarnings(True)  # library warnings as one log line, not a source excerpt
    from .train.loop import DivergenceError, RunInterrupted

    try:
        return int(args.func(args) or 0)
    except RunInterrupted as e:
        console.print(f"[yellow]interrupted:[/] {e}")
        return 130
    except DivergenceError as e:
        console.print(f"[bold red]diverged:[/] {e}")
        return 3
    except (ValueError, TypeError, FileNotFoundError) as e:
        console.print(f"[bold red]error:[/] {e}")
        return 2
    finally:
        logging.captureWarnings(False)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
