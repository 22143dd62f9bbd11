"""What every command shares: the console (pipe-safe, unwrapped in files), the ``--data-dir``
option, the process-wide settings the CLI applies."""

from __future__ import annotations

import argparse
import io
import os
import sys

from rich.console import Console

console = Console()

#: width for output that is not a terminal (log files, pipes): lines are never wrapped
UNWRAPPED_WIDTH = 10_000


class _Stdout(io.TextIOBase):
    """``sys.stdout`` (looked up at every write, so captured output works), which survives a
    closed pipe (``lipschitz-rnn ... | head``): after a BrokenPipeError output goes nowhere and
    the command carries on (a training run still writes its results)."""

    broken = False

    def write(self, text: str) -> int:
        if not _Stdout.broken:
            try:
                return sys.stdout.write(text)
            except BrokenPipeError:
                _Stdout._silence()
        return len(text)

    def flush(self) -> None:
        if not _Stdout.broken:
            try:
                sys.stdout.flush()
            except BrokenPipeError:
                _Stdout._silence()

    def isatty(self) -> bool:
        return not _Stdout.broken and sys.stdout.isatty()

    @staticmethod
    def _silence() -> None:
        _Stdout.broken = True
        try:  # also silence the interpreter's final flush of stdout
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError, io.UnsupportedOperation):
            pass


def configure_console() -> None:
    """Output of one command: pipe-safe, and unwrapped when stdout is not a terminal."""
    console.file = _Stdout()
    terminal = sys.stdout.isatty()
    console.soft_wrap = not terminal
    console.width = None if terminal else UNWRAPPED_WIDTH


def data_dir_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        default=None,
        help="data directory (default: $LIPSCHITZ_RNN_DATA, else ~/.cache/lipschitz_rnn)",
    )


def process_settings() -> str:
    """Process-wide CPU settings for training and benchmarking (the CLI owns the process; the
    library never changes them): see :func:`lipschitz_rnn.process.configure_process`."""
    from .. import process  # loads torch: only when a command applies them

    return process.configure_process()
