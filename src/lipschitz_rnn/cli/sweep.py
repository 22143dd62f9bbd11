"""``lipschitz-rnn sweep``: hyperparameter sweeps on Ray Tune (:mod:`lipschitz_rnn.sweep`)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from rich.live import Live
from rich.markup import escape
from rich.text import Text

from ._console import console, data_dir_arg

#: the exit status of a sweep in which trials failed (cli.EXIT_CODES)
EXIT_TRIALS_FAILED = 6


def _line(p) -> Text:
    c = p.counts
    parts = [f"{p.done}/{p.total} done"]
    parts += [f"{c[s]} {s}" for s in ("ok", "diverged", "stopped", "failed") if c.get(s)]
    parts.append(f"{len(p.running)} running")
    best = "-" if p.best is None else f"{p.best:.4g} ({p.best_trial})"
    t = Text.assemble(("sweep ", "bold"), ", ".join(parts),
                      f"; best valid {p.metric} {best}")
    if p.event:
        t.append(f"  [{p.event}]", style="dim")
    return t


def _cmd_sweep(args: argparse.Namespace) -> int:
    from ..sweep import run_sweep
    from ..sweep.runner import SWEEP_EXTRA_MESSAGE, RayConnectError

    if args.spec is None and not args.resume:
        raise ValueError("give SPEC.toml (or --resume to continue the sweep in --out)")
    if not args.resume:  # an --out that cannot be created: one line, exit status 4
        from .._io import check_creatable_dir

        check_creatable_dir(args.out)
    if not args.verbose:  # Tune's advice (e.g. Tuner.restore) is not how a sweep resumes
        logging.getLogger("ray.tune").setLevel(logging.ERROR)
    terminal = console.is_terminal
    live = Live(Text("sweep: starting"), console=console, auto_refresh=False,
                transient=False) if terminal else None

    def progress(p) -> None:
        if live is not None:
            live.update(_line(p), refresh=True)
        elif p.event.endswith(("ok", "diverged", "stopped", "failed")) or not p.running:
            console.print(_line(p))

    def notice(text: str) -> None:
        console.print(f"[yellow]note:[/] {escape(text)}")

    try:
        if live is not None:
            live.start()
        try:
            res = run_sweep(
                args.spec, args.out, resume=args.resume, address=args.address,
                max_concurrent=args.max_concurrent, num_cpus=args.num_cpus,
                data_dir=args.data_dir, progress=progress, trial_process_settings=True,
                storage=args.storage, max_failures=args.max_failures, notice=notice,
            )
        finally:
            if live is not None:
                live.stop()
    except ImportError as e:
        if SWEEP_EXTRA_MESSAGE not in str(e):
            raise
        console.print(f"[bold red]error:[/] {escape(str(e))}")
        return 2
    except (ValueError, TypeError, FileNotFoundError, RayConnectError) as e:
        # spec errors name tables as "[grid] lr": print them as text, not as rich markup
        console.print(f"[bold red]error:[/] {escape(str(e))}")
        return 2
    counts = res["counts"]
    console.print(
        f"[bold]sweep[/] {res['out']}: "
        + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        + (f"; best valid {res['metric']} {res['best']:.4g} ({res['best_trial']})"
           if res["best"] is not None else "")
    )
    console.print(f"tables: {res['out']}/trials.csv, spectra.npz, sweep.json")
    if counts.get("pending"):  # Tune ends early only when interrupted (Ctrl-C)
        console.print(f"[yellow]interrupted:[/] {counts['pending']} trials did not finish; "
                      f"continue with lipschitz-rnn sweep --resume --out {res['out']}")
        return 130
    if counts.get("failed"):
        logs = f" and {res['ray_logs']}" if res.get("ray_logs") else ""
        console.print(
            f"[yellow]{counts['failed']} of {sum(counts.values())} trials failed:[/] "
            f"{escape(res['out'])}/trials/<id>/trial.json says why (the error column of "
            f"trials.csv); Ray's own messages are in {escape(res['driver_log'])}"
            f"{escape(logs)}; --resume runs the failed trials again")
        return EXIT_TRIALS_FAILED
    return 0


def add_commands(sub) -> None:
    _add_sweep(sub)
    _add_study(sub)


def _add_sweep(sub) -> None:
    s = sub.add_parser(
        "sweep",
        help="run a hyperparameter sweep on Ray Tune, with Lyapunov spectra of every trial",
        description="Run the trials of SPEC.toml (docs/sweep.md) on Ray Tune into --out: "
        "trials/<id>/ run directories, trials.csv, spectra.npz, sweep.json.",
    )
    s.add_argument("spec", nargs="?", metavar="SPEC.toml",
                   help="the sweep specification (optional with --resume)")
    s.add_argument("--out", required=True, help="sweep directory")
    s.add_argument("--address", default=None,
                   help="attach to this Ray cluster (default: $RAY_ADDRESS, else a local Ray)")
    s.add_argument("--max-concurrent", type=int, default=None, metavar="N",
                   help="at most N trials at once (default: one per CPU)")
    s.add_argument("--num-cpus", type=int, default=None, metavar="N",
                   help="CPUs of the local Ray (default: all)")
    s.add_argument("--resume", action="store_true",
                   help="continue the sweep in --out: finished trials are kept, the others "
                   "continue from their checkpoints")
    s.add_argument("--storage", default=None, metavar="URI",
                   help="Ray Tune's storage: a path every node sees or a URI pyarrow.fs "
                   "understands (s3://, gs://, ...); on a cluster the trials keep a checkpoint "
                   "there after every epoch, so a lost node or driver costs at most an epoch "
                   "(default: DIR/ray, checkpoints stay on the trials' nodes)")
    s.add_argument("--max-failures", type=int, default=None, metavar="N",
                   help="run a trial whose Ray worker was lost (e.g. its node died) again up to "
                   "N times, from its last checkpoint (default: 2 on a cluster, 0 on a local "
                   "Ray)")
    data_dir_arg(s)
    s.set_defaults(func=_cmd_sweep)


def _add_study(sub) -> None:
    st = sub.add_parser(
        "study",
        help="does the early Lyapunov spectrum predict the final metric? (a sweep's readout)",
        description="Score the spectrum features of a finished sweep against its trials' final "
        "validation metric, beside fair baselines (hyperparameters through a linear and a "
        "nonlinear surrogate, the early validation metric): repeated grouped cross-validation "
        "(median and 95%% interval of R^2, Spearman rho and AUC per feature set and model, "
        "paired differences), leave one unit out, leave a range of a swept key out, transfer "
        "from another sweep (--predictor-from), Spearman rho of single features with bootstrap "
        "intervals over groups; writes study.json, study.md and PNG plots into the sweep "
        "directory (docs/study.md).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    st.add_argument("sweep_dir", metavar="DIR", help="a sweep directory (lipschitz-rnn sweep)")
    st.add_argument("--folds", type=int, default=5, help="cross-validation folds")
    st.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples")
    st.add_argument("--seed", type=int, default=0, help="seed of folds and resamples")
    st.add_argument("--repeats", type=int, default=20,
                    help="random grouped splits of the repeated cross-validation (medians and "
                    "95 %% intervals over them)")
    st.add_argument("--models", default="ridge,forest,aelle",
                    help="model families, comma-separated: ridge (linear), forest (random "
                    "forest) over every feature set; aelle adds the aelle@E sets (an "
                    "autoencoder over the spectrum with a linear head, Vogt et al. 2022)")
    st.add_argument("--equivalent", action="append", default=[], metavar="[KEY=VALUE:]KEYS",
                    help="near-duplicates: ignore the swept KEYS (comma-separated) when "
                    "grouping the trials whose KEY is VALUE (all trials without KEY=VALUE:), e.g. "
                    "model=lipschitz:model.init_scale; repeatable; added to the sweep spec's "
                    "[study] equivalent")
    st.add_argument("--ood-key", default=None, metavar="KEY",
                    help="the swept key whose top range is left out (None: the sweep spec's "
                    "[study] ood_key, else model.init_scale when it is swept)")
    st.add_argument("--ood-quantile", type=float, default=0.75,
                    help="leave out the trials at or above this quantile of --ood-key, per unit")
    st.add_argument("--replay", action="store_true",
                    help="also replay spectrum-guided pruning against ASHA and random pruning "
                    "on the sweep (pruning.json)")
    st.add_argument("--fraction", type=float, default=0.5,
                    help="fraction pruned at the decision epoch in the replay")
    st.add_argument("--min-history", type=int, default=8,
                    help="finished trials needed before the replayed rules prune")
    st.add_argument("--orders", type=int, default=30,
                    help="random trial orders of the replay's regret curves (pruning.md, "
                    "pruning_regret.png)")
    st.add_argument("--predictor-from", default=None, metavar="OTHER_DIR",
                    help="another sweep whose trials fit the predictors: the study scores every "
                    "feature set fitted there on this sweep (ood.transfer; R² only when the "
                    "metric is the same), and the replay's lyapunov rule applies its spectrum "
                    "predictor here (default: no transfer; the replay cross-fits on this sweep "
                    "over folds grouped by configuration)")
    st.add_argument("--reduction-factor", type=float, default=2.0,
                    help="reduction factor of Ray's ASHA in the replay (rungs at 1, rf, rf^2, "
                    "... epochs)")
    st.set_defaults(func=_cmd_study)


def _cmd_study(args: argparse.Namespace) -> int:
    from ..sweep import replay, run_study
    from ..sweep.pruning import regret_markdown, replay_regret, write_pruning

    with console.status("study: cross-validating feature sets"):
        s = run_study(args.sweep_dir, folds=args.folds, bootstrap=args.bootstrap, seed=args.seed,
                      repeats=args.repeats, equivalent=args.equivalent, ood_key=args.ood_key,
                      ood_quantile=args.ood_quantile, predictor_from=args.predictor_from,
                      models=[m.strip() for m in args.models.split(",") if m.strip()])
    console.print(f"{s['n_trials']} trials, {s['n_configs']} configurations, {s['n_groups']} "
                  f"groups ({s['metric']['name']})")
    console.print("one grouped split:")
    for a, r in zip(s["auc"], s["r2"], strict=True):
        auc = "—" if a["auc"] is None else f"{a['auc']:.3f}"
        r2 = "—" if r["r2"] is None else f"{r['r2']:.3f}"
        console.print(f"  {a['feature_set']:<32} AUC {auc}   R² {r2}", markup=False)
    if s["cv"]["entries"]:
        console.print(f"{s['cv']['repeats']} grouped splits, median [2.5 %, 97.5 %]:")
    for e in s["cv"]["entries"]:
        med, ci = e["median"], e["ci95"]
        cells = ["—" if med.get(m) is None else
                 f"{med[m]:.3f} [{ci[m][0]:.3f}, {ci[m][1]:.3f}]" for m in ("r2", "rho", "auc")]
        console.print(f"  {e['feature_set']:<32} {e['model']:<6} R² {cells[0]:<22} "
                      f"ρ {cells[1]:<22} AUC {cells[2]}", markup=False)
    for note in s.get("notes", []):  # what could not be computed (—), and why
        console.print(f"  note: {note}", markup=False)
    if args.replay:
        rp = replay(args.sweep_dir, fraction=args.fraction, min_history=args.min_history,
                    seed=args.seed)
        with console.status(f"pruning: replaying {args.orders} random trial orders"):
            rp["regret"] = replay_regret(
                args.sweep_dir, orders=args.orders, seed=args.seed, fraction=args.fraction,
                predictor_from_dir=args.predictor_from, reduction_factor=args.reduction_factor)
        write_pruning(args.sweep_dir, rp)
        for name, o in rp["rules"].items():
            console.print(
                f"  pruning {name:<9} stopped {o['stopped']:>5.1f}  compute saved "
                f"{o['compute_saved_frac']:.1%}  best kept {o['best_kept']:.4f}  top-5 recall "
                f"{o['top5_recall']:.2f}", markup=False)
        console.print(regret_markdown(rp["regret"]), markup=False)
    console.print(f"wrote {Path(args.sweep_dir) / 'study.md'}")
    return 0
