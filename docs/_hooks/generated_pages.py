"""MkDocs hook: pages generated at build time, so that nothing is written twice.

* ``index.md`` is the README (its links into ``docs/`` made relative to the site);
* ``cli.md`` is the ``lipschitz-rnn`` parser's own help, command by command (argparse is the
  single source: a new option appears here without anyone retyping it).
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[2]


def _index_page() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    # README links point into docs/ from the repository root; the site root *is* docs/
    return re.sub(r"\]\(docs/", "](", text)


def _subcommands(parser: argparse.ArgumentParser):
    for action in parser._actions:  # argparse keeps subparsers only here
        if isinstance(action, argparse._SubParsersAction):
            return action.choices
    return {}


def _cli_page() -> str:
    from lipschitz_rnn.cli import build_parser

    parser = build_parser()
    parser.prog = "lipschitz-rnn"
    out = [
        "# Command line",
        "",
        "Generated from the `lipschitz-rnn` argument parser at build time: this is exactly what "
        "`lipschitz-rnn COMMAND --help` prints.",
        "",
        "```text",
        parser.format_help().rstrip(),
        "```",
        "",
    ]
    for name, sub in _subcommands(parser).items():
        out += [f"## `{name}`", "", "```text", sub.format_help().rstrip(), "```", ""]
    return "\n".join(out)


def on_files(files, config):
    for name, content in (("index.md", _index_page()), ("cli.md", _cli_page())):
        existing = files.get_file_from_path(name)
        if existing is not None:
            files.remove(existing)
        files.append(File.generated(config, name, content=content))
    return files
