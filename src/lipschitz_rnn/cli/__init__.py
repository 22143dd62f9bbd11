"""The ``lipschitz-rnn`` command line. Thin: parse arguments, call the library, render with rich.

One module per group of commands (:mod:`.train`, :mod:`.analysis`, :mod:`.bench`), each adding
its subcommands to the parser; :mod:`._common` holds the console and the training front-end.
Command functions import the library lazily so that ``lipschitz-rnn --help`` stays fast.
"""

from __future__ import annotations

import argparse
import logging
import sys

from . import analysis, bench, train
from ._common import console, process_settings, run_training

__all__ = ["main", "build_parser", "run_training", "process_settings", "console"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lipschitz-rnn",
        description="Lipschitz RNNs and recurrent networks as dynamical systems.",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = p.add_subparsers(dest="command", required=True)
    for group in (train, analysis, bench):
        group.add_commands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    logging.captureWarnings(True)  # library warnings as one log line, not a source excerpt
    from ..train.loop import DivergenceError, RunInterrupted

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
