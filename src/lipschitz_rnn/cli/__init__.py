"""The ``lipschitz-rnn`` command line. Thin: parse arguments, call the library, render with rich.

One module per group of commands (:mod:`.train`, :mod:`.analysis`, :mod:`.bench`), each adding
its subcommands to the parser; :mod:`._console` holds the console and what every command
shares, :mod:`._training` the training front-end (:mod:`._progress` its display).
Command functions import the library when they run: at the top level the modules of this
package import only argparse, rich and the light modules of the package, so that
``import lipschitz_rnn.cli`` loads no torch and ``lipschitz-rnn --help`` stays fast
(``tests/test_layout.py`` checks it).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

from rich.markup import escape

from . import analysis, bench, report, sweep, train
from ._console import configure_console, console

__all__ = ["main", "build_parser", "EXIT_CODES"]

#: exit status -> meaning (also in ``lipschitz-rnn --help``)
EXIT_CODES = {
    0: "success",
    1: "an unexpected internal error (a traceback follows; please report it)",
    2: "bad usage or input: a wrong argument or setting, missing or damaged data or checkpoint "
    "files (the message names what and where)",
    3: "training diverged (non-finite loss); the message names the epoch and step",
    4: "a file or directory could not be created or written (disk full, no permission, a path "
    "through a file): one line names it and the system's reason; nothing is left half-written "
    "and a previous version is intact",
    5: "a distributed run (torchrun) lost a rank: it died, failed or hung past the timeout",
    6: "a sweep ended with failed trials (diverged or stopped ones count as finished): the "
    "summary says how many and where to read why; --resume runs them again",
    130: "interrupted (Ctrl-C); a training run saved a checkpoint to --resume from",
}

#: seconds that a rank leaving its error to another rank's report waits before it exits under
#: torchrun. torchrun ends every rank as soon as one exits with an error, so a silent rank that
#: exited first could end the reporting rank before it printed (a rank on a slower host meets a
#: usage error later); the reporter's own exit ends the wait early.
REPORT_GRACE_S = 10.0


def _exit_codes_help() -> str:
    return "exit status:\n" + "\n".join(f"  {code:<4} {text}" for code, text in EXIT_CODES.items())


class _Parser(argparse.ArgumentParser):
    """argparse, silent on the ranks other than 0 under torchrun: a usage error (or --help) is
    printed once, and every rank exits with the same status."""

    def _print_message(self, message, file=None):
        rank, world = _rank_and_world()
        if world <= 1 or rank == 0:
            super()._print_message(message, file)

    def exit(self, status=0, message=None):
        rank, world = _rank_and_world()
        if status and world > 1 and rank != 0:
            _await_report()
        super().exit(status, message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
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
    from ..train.distributed import DistributedError, origin_rank
    from ..train.loop import DivergenceError, RunInterrupted

    try:
        return int(args.func(args) or 0)
    except RunInterrupted as e:
        return _fail(130, "[yellow]interrupted:[/] ", e, every_rank=False)
    except KeyboardInterrupt:
        return _fail(130, "[yellow]interrupted[/]", None, every_rank=False)
    except DivergenceError as e:
        return _fail(3, "[bold red]diverged:[/] ", e)
    except WriteError as e:
        return _fail(4, "[bold red]error:[/] ", e)
    except DistributedError as e:
        return _fail(5, "[bold red]error:[/] ", e)
    except OSError as e:
        if _about_output(e, args):  # e.g. a folder of --out that cannot be created
            return _fail(4, "[bold red]error:[/] ", _output_error(e))
        if isinstance(e, FileNotFoundError):
            return _fail(2, "[bold red]error:[/] ", e)
        if _reported_elsewhere(e, origin_rank):
            _await_report()
            return 1
        raise
    except (ValueError, TypeError) as e:
        return _fail(2, "[bold red]error:[/] ", e)
    except Exception as e:
        if _reported_elsewhere(e, origin_rank):  # another rank prints it (and its traceback)
            _await_report()
            return 1
        raise
    finally:
        logging.captureWarnings(False)


def _output_paths(args: argparse.Namespace) -> list[Path]:
    """What the command writes to: ``--out``, and the run directory of ``train --resume``."""
    paths = [getattr(args, "out", None)]
    if args.command == "train" and isinstance(getattr(args, "resume", None), str):
        paths.append(args.resume)
    return [Path(p).absolute() for p in paths if isinstance(p, (str, os.PathLike)) and p]


def _about_output(e: OSError, args: argparse.Namespace) -> bool:
    """Whether ``e`` concerns an output path: the path itself, inside it, or a folder above it
    (created on the way)."""
    outs = _output_paths(args)
    for name in (e.filename, e.filename2):
        if isinstance(name, (str, os.PathLike)) and name:
            f = Path(name).absolute()
            if any(f == o or f.is_relative_to(o) or o.is_relative_to(f) for o in outs):
                return True
    return False


def _output_error(e: OSError) -> OSError:
    from .._io import WriteError, write_error

    if isinstance(e, WriteError):
        return e
    return write_error(Path(e.filename), e, "create or write")


def _reported_elsewhere(e: BaseException, origin_rank) -> bool:
    """Under torchrun: ``e`` is the error of another rank, which prints it."""
    rank, world = _rank_and_world()
    origin = origin_rank(e)
    return world > 1 and origin is not None and origin != rank


def _rank_and_world() -> tuple[int, int]:
    """This process's rank and the world size under torchrun (0, 1 otherwise)."""
    try:
        return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 0, 1


def error_line(label: str, e: BaseException | None, *, every_rank: bool = True) -> str | None:
    """The line the CLI prints for ``e`` (rich markup in ``label``, the message literal), or None
    when another process reports it: under torchrun an error that one rank raised and the others
    re-raise (``origin_rank``) is printed by its own rank alone, an error raised before the
    processes joined their group (bad arguments or settings, the same on every rank) and
    ``every_rank=False`` events (an interrupt reaches every rank) by rank 0 alone. Other ranks'
    lines start ``rank N:``."""
    rank, world = _rank_and_world()
    if world > 1:
        from ..train.distributed import group_joined, origin_rank

        origin = origin_rank(e) if e is not None else None
        if origin is None and e is not None and not group_joined():
            origin = 0  # before the processes met: an error of the arguments, the same on all
        if (origin is not None and origin != rank) or (not every_rank and rank != 0):
            return None
    tag = f"rank {rank}: " if world > 1 and rank != 0 else ""
    return f"{tag}{label}{escape(str(e)) if e is not None else ''}"


def _fail(code: int, label: str, e: BaseException | None, *, every_rank: bool = True) -> int:
    """Print the line for ``e`` (or, where another rank prints it, wait for that); ``code``."""
    line = error_line(label, e, every_rank=every_rank)
    if line is not None:
        console.print(line)
    else:
        _await_report()
    return code


def _await_report() -> None:
    """Under torchrun, before a rank exits silently with an error that another rank reports:
    give the reporter time to print (torchrun ends this rank when the reporter exits)."""
    if "TORCHELASTIC_RUN_ID" in os.environ:
        time.sleep(REPORT_GRACE_S)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
