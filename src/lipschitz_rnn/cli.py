"""The ``lipschitz-rnn`` command line. Thin: parse arguments, call the library, render with rich."""

from __future__ import annotations

import argparse
import logging
import sys

from rich.console import Console
from rich.table import Table

console = Console()


def _cmd_models(args: argparse.Namespace) -> int:
    from .models import MODELS

    table = Table(title="models (lipschitz_rnn.models.build)")
    table.add_column("name")
    table.add_column("description")
    for name, (_, desc) in MODELS.items():
        table.add_row(name, desc)
    console.print(table)
    return 0


def _cmd_quickstart(args: argparse.Namespace) -> int:
    from .quickstart import run_quickstart

    return run_quickstart(args, console)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lipschitz-rnn",
        description="Lipschitz RNNs and recurrent networks as dynamical systems.",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("models", help="list the models of the registry")
    s.set_defaults(func=_cmd_models)

    s = sub.add_parser("quickstart", help="train a Lipschitz RNN on a small bundled data set")
    s.add_argument("--out", default="runs/quickstart", help="run directory")
    s.add_argument("--epochs", type=int, default=None, help="override the number of epochs")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--force", action="store_true", help="overwrite an existing run directory")
    s.set_defaults(func=_cmd_quickstart)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except (ValueError, TypeError, FileNotFoundError) as e:
        console.print(f"[bold red]error:[/] {e}")
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
