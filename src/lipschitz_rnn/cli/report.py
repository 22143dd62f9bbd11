"""The ``report`` command: one self-contained HTML page of runs and sweeps."""

from __future__ import annotations

import argparse

from ._console import console


def _cmd_report(args: argparse.Namespace) -> int:
    from ..report import write_report

    with console.status("writing the report"):
        path = write_report(args.paths, args.out)
    console.print(f"wrote {path}")
    return 0


def add_commands(sub) -> None:
    s = sub.add_parser(
        "report",
        help="a self-contained HTML report of runs and sweeps",
        description="Write one HTML file (no network, figures inline) with each run's "
        "configuration, learning curves, stability certificate and analyses (Lyapunov, "
        "Hessian, robustness); several runs are also compared side by side; a sweep "
        "directory gets its trials table and its study. Missing pieces are skipped with a note.",
    )
    s.add_argument("paths", nargs="+", metavar="RUN", help="run or sweep directories")
    s.add_argument(
        "--out",
        default=None,
        metavar="FILE.html",
        help="where to write it (default: RUN/report.html for one directory, ./report.html "
        "for several)",
    )
    s.set_defaults(func=_cmd_report)
