"""The ``lipschitz-rnn`` command line. Thin: parse arguments, call the library, render with rich.

One module per group of commands (:mod:`.train`, :mod:`.analysis`, :mod:`.bench`), each adding
its subcommands to the parser; :mod:`._common` holds the console and the training front-end.
Command functions import the library lazily so that ``lipschitz-rnn --help`` stays fast.
"""

from __future__ import annotations

import argparse
import logging
import sys

from rich.markup import escape

from . import analysis, bench, report, sweep, train
from ._common import configure_console, console, process_settings, run_training

__all__ = ["main", "build_parser", "run_training", "process_settings", "console", "EXIT_CODES"]

#: exit status -> meaning (also in ``lipschitz-rnn --help``)
EXIT_CODES = {
    0: "success",
    1: "an unexpected internal error (a traceback follows; please report it)",
    2: "bad usage or input: a wrong argument or setting, missing or damaged data or checkpoint "
    "files (the message names what and where)",
    3: "training diverged (non-finite loss); the message names the epoch and step",
    4: "a file could not be written (disk full, no permission); the previous version is intact",
    5: "a distributed run (torchrun) lost a rank: it died, failed or hung past the timeout",
    130: "interrupted (Ctrl-C); a training run saved a checkpoint to --resume from",
}


def _exit_codes_help() -> str:
    return "exit status:\n" + "\n".join(f"  {code:<4} {text}" for code, text in EXIT_CODES.items())


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lipschitz-rnn",
        description="Lipschitz RNNs and recurrent networks as dynamical systems.",
        epilog=_exit_codes_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = p.add_subparsers(dest="command", required=True)
    for group in (train, analysis, bench, report, sweep):
        group.add_commands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_console()
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    logging.captureWarnings(True)  # library warnings as one log line, not a source excerpt
    from .._io import WriteError
    from ..train.loop import DistributedError, DivergenceError, RunInterrupted

    try:
        return int(args.func(args) or 0)
    except RunInterrupted as e:
        console.print(f"[yellow]interrupted:[/] {escape(str(e))}")
        return 130
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]")
        return 130
    except DivergenceError as e:
        console.print(f"[bold red]diverged:[/] {escape(str(e))}")
        return 3
    except WriteError as e:
        console.print(f"[bold red]error:[/] {escape(str(e))}")
        return 4
    except DistributedError as e:
        console.print(f"[bold red]error:[/] {escape(str(e))}")
        return 5
    except (ValueError, TypeError, FileNotFoundError) as e:
        console.print(f"[bold red]error:[/] {escape(str(e))}")
        return 2
    finally:
        logging.captureWarnings(False)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
