"""Commands that build and train: ``models``, ``presets``, ``train``, ``evaluate``, ``certify``,
``quickstart``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.markup import escape
from rich.table import Table

from ._console import console, data_dir_arg
from ._training import dist_kwargs, distributed_args, run_training


def _cmd_models(args: argparse.Namespace) -> int:
    from ..models import MODELS

    table = Table(title="models (lipschitz_rnn.models.build)")
    table.add_column("name")
    table.add_column("description")
    for name, (_, desc) in MODELS.items():
        table.add_row(name, desc)
    console.print(table)
    return 0


def _cmd_presets(args: argparse.Namespace) -> int:
    from ..runs.config import list_presets

    table = Table(title="presets (lipschitz-rnn train --preset NAME)")
    table.add_column("name", no_wrap=True)
    table.add_column("description")
    for name, desc in list_presets().items():
        table.add_row(name, desc)
    console.print(table)
    return 0


#: the value of ``--resume`` given alone: the run to resume is the one at ``--out``
RESUME_AT_OUT = ""


def _cmd_train(args: argparse.Namespace) -> int:
    from ..runs.config import parse_set, resolve_config

    if args.resume is not None:
        return _resume(args)
    if args.resume_from != "last":
        raise ValueError("--resume-from goes with --resume")
    if args.out is None:
        raise ValueError("--out RUN_DIR is required (or --resume RUN_DIR)")
    if args.preset is None and (args.task is None or args.model is None):
        raise ValueError("give --task and --model, or --preset")
    overrides = parse_set(args.set or [])
    if args.lyapunov_every is not None:
        overrides["lyapunov_every"] = args.lyapunov_every
    if args.tensorboard:
        overrides["tensorboard"] = True  # recorded in config.toml
    config = resolve_config(
        task=args.task, model=args.model, preset=args.preset, overrides=overrides
    )
    _check_names(config)
    run_training(config, args.out, data_dir=args.data_dir, force=args.force, **dist_kwargs(args),
                 callbacks=_tensorboard(config, False))
    return 0


def _resume(args: argparse.Namespace) -> int:
    """``train --resume RUN_DIR [--set ...]``: the run as it was configured (``--set`` may change
    what :data:`~lipschitz_rnn.runs.config.RESUMABLE_KEYS` lists); ``train ... --out RUN_DIR
    --resume``: the command that started the run, repeated: its configuration must be the
    run's (a difference in a resumable setting is applied, any other is refused)."""
    from ..runs.config import parse_set, resolve_config

    natural = args.resume == RESUME_AT_OUT
    given = [f"--{n}" for n in ("task", "model", "preset") if getattr(args, n)]
    if natural:
        if not args.out:
            raise ValueError("--resume without a value continues the run at --out: give "
                             "--out RUN_DIR (or --resume RUN_DIR)")
        if args.force:
            raise ValueError("--force starts the run at --out again; --resume continues it: "
                             "give one of them")
        run_dir = args.out
    else:
        if args.out:
            given.append("--out")
        if args.force:
            given.append("--force")
        if given:
            raise ValueError(
                f"--resume RUN_DIR continues the run as it was configured; {', '.join(given)} "
                "cannot be given with it (change epochs, the learning-rate schedule or what is "
                "monitored with --set KEY=VALUE; to repeat the command that started the run, "
                "add --resume without a value to it: ... --out RUN_DIR --resume)"
            )
        run_dir = args.resume
    overrides = parse_set(args.set or [])
    if args.lyapunov_every is not None:
        overrides["lyapunov_every"] = args.lyapunov_every
    config = None
    if natural and given:  # the run's configuration, checked against the saved one
        config = resolve_config(task=args.task, model=args.model, preset=args.preset,
                                overrides=overrides)
        _check_names(config)
        overrides = None
    run_training(config, run_dir, data_dir=args.data_dir, resume=True, overrides=overrides,
                 resume_from=args.resume_from, **dist_kwargs(args),
                 callbacks=_tensorboard(_saved_config(run_dir), args.tensorboard))
    return 0


def _saved_config(run_dir):
    """The configuration of the run in ``run_dir``, or None when it has none (the loop then
    says so)."""
    from ..runs.rundir import RunDir

    run = RunDir(run_dir)
    return run.config() if run.is_run() else None


def _tensorboard(config, flag: bool) -> list:
    """The TensorBoard callback when ``--tensorboard`` or the config asks for it."""
    from ..train.tensorboard import tensorboard_callbacks

    try:
        return tensorboard_callbacks(config, force=flag)
    except ImportError as e:
        raise ValueError(f"--tensorboard: {e}") from None  # main() prints it literally


def _check_names(config) -> None:
    from ..data import TASKS
    from ..models import MODELS

    if config.task not in TASKS:
        raise ValueError(f"--task must be one of {sorted(TASKS)}, got {config.task!r}")
    if config.model not in MODELS:
        raise ValueError(f"--model must be one of {sorted(MODELS)}, got {config.model!r}")


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from ..runs.rundir import evaluate_run

    res = evaluate_run(args.run_dir, data_dir=args.data_dir, split=args.split,
                       which=args.checkpoint)
    console.print(json.dumps(res))
    return 0


def _cmd_certify(args: argparse.Namespace) -> int:
    from ..runs.rundir import load_run
    from ..stability import certify

    # the weights only: no data set needed for runs that wrote model.json
    _, _, model = load_run(args.run_dir, data_dir=args.data_dir, which=args.checkpoint, data=False)
    for cert in certify(model):
        console.print(str(cert))
    return 0


def _quickstart_dir_state(out: Path, config) -> str:
    """What ``out`` holds for ``quickstart``: ``"empty"`` (absent or empty), ``"finished"`` or
    ``"unfinished"`` (a quick-start run with this very configuration, with or without its
    ``results.json``), or ``"other"`` (another run, or other files)."""
    from ..runs.rundir import RunDir

    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return "empty"
    run = RunDir(out)
    if not out.is_dir() or not run.is_run():
        return "other"
    try:
        same = run.config() == config
    except (OSError, ValueError):
        return "other"
    if not same:
        return "other"
    try:
        float(run.results()["test"]["accuracy"])
    except (OSError, ValueError, KeyError, TypeError):  # absent or damaged: train again
        return "unfinished"
    return "finished"


def _cmd_quickstart(args: argparse.Namespace) -> int:
    from ..runs.config import resolve_config
    from ..runs.rundir import RunDir, load_run
    from ..stability import certify

    overrides = {"seed": args.seed}
    if args.epochs is not None:
        overrides["epochs"] = args.epochs
    config = resolve_config(preset="digits-lipschitz", overrides=overrides)
    out = Path(args.out)
    # the preset's description starts "the quick start: " (for the presets table)
    what = config.description.removeprefix("the quick start: ")
    console.print(f"[bold]quick start[/]: {escape(what)}")
    state = "empty" if args.force else _quickstart_dir_state(out, config)
    if state == "other":
        raise ValueError(
            f"{out} already holds another run or other files; quickstart --force overwrites it, "
            "quickstart --out DIR trains into another directory"
        )
    if state == "finished":  # run twice: show the run already there rather than refuse
        console.print(f"{out} already holds this quick start, trained earlier: its results are "
                      "below (quickstart --force trains it again, --out DIR elsewhere)",
                      markup=False)
        results = RunDir(out).results()
    else:  # an interrupted quick start of the same settings is trained again from the start
        results = run_training(config, out, force=args.force or state == "unfinished")
    acc = results["test"]["accuracy"]
    console.print(f"[bold green]test accuracy {100 * acc:.2f}%[/]")
    _, _, model = load_run(out, data=False)
    console.print("[bold]stability certificate of the trained layer[/]")
    for cert in certify(model):
        console.print(str(cert))
        console.print(cert.verdict(), markup=False)
    return 0


def add_commands(sub) -> None:
    s = sub.add_parser("models", help="list the models of the registry")
    s.set_defaults(func=_cmd_models)
    s = sub.add_parser("presets", help="list the training presets")
    s.set_defaults(func=_cmd_presets)

    s = sub.add_parser("train", help="train a model on a task")
    s.add_argument("--task")
    s.add_argument("--model")
    s.add_argument("--preset", help="a shipped preset (lipschitz-rnn presets) or a TOML file")
    s.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a setting (model.eps=0.1, task.length=200, lr=0.001, ...)",
    )
    s.add_argument("--out", help="run directory")
    s.add_argument(
        "--resume",
        nargs="?",
        const=RESUME_AT_OUT,
        metavar="RUN_DIR",
        help="continue an interrupted run; --set may change epochs, the learning-rate schedule "
        "and what is monitored (recorded in RUN_DIR/resumes.jsonl). Without RUN_DIR: the run at "
        "--out, whose configuration must be the one this command gives (the command that "
        "started it, plus --resume)",
    )
    s.add_argument(
        "--resume-from",
        choices=["last", "previous"],
        default="last",
        help="checkpoint to continue from: the last one, or the one before it (when the last "
        "is damaged)",
    )
    s.add_argument("--force", action="store_true", help="overwrite an existing run directory")
    s.add_argument(
        "--lyapunov-every",
        type=int,
        default=None,
        metavar="E",
        help="log a Lyapunov spectrum summary every E epochs",
    )
    s.add_argument(
        "--tensorboard",
        action="store_true",
        help="also log to RUN_DIR/tb/ for TensorBoard (config key tensorboard; needs "
        "lipschitz-rnn[tensorboard])",
    )
    data_dir_arg(s)
    distributed_args(s)
    s.set_defaults(func=_cmd_train)

    s = sub.add_parser("evaluate", help="re-compute a run's test metrics from its best checkpoint")
    s.add_argument("run_dir")
    s.add_argument("--split", default="test", choices=["train", "valid", "test"])
    s.add_argument(
        "--checkpoint",
        default="best",
        choices=["best", "last", "best.prev", "last.prev"],
        help="which checkpoint to evaluate",
    )
    data_dir_arg(s)
    s.set_defaults(func=_cmd_evaluate)

    s = sub.add_parser("certify", help="stability certificate of a run's Lipschitz cells")
    s.add_argument("run_dir")
    s.add_argument(
        "--checkpoint", default="best", choices=["best", "last", "best.prev", "last.prev"]
    )
    data_dir_arg(s)
    s.set_defaults(func=_cmd_certify)

    s = sub.add_parser("quickstart", help="train a Lipschitz RNN on bundled digits (no download)")
    s.add_argument("--out", default="runs/quickstart", help="run directory")
    s.add_argument("--epochs", type=int, default=None, help="override the number of epochs")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--force", action="store_true",
                   help="train again into --out even when it holds a run (overwriting it)")
    s.set_defaults(func=_cmd_quickstart)
