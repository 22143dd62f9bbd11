"""The API reference builds from the docstrings with no warning (mkdocs --strict), and its
generated pages say what the code says."""

import importlib
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("mkdocstrings") is None,
    reason="the docs tools are in the dev extra (pip install -e '.[dev]')",
)


def test_reference_builds_strict_and_covers_the_public_api(tmp_path):
    site = tmp_path / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(site)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # every page of the reference documents every name of its module's __all__
    pages = sorted((ROOT / "docs" / "api").glob("*.md"))
    assert len(pages) >= 10
    for md in pages:
        module = importlib.import_module(re.search(r"^::: (\S+)", md.read_text(), re.M)[1])
        page = (site / "api" / ("" if md.stem == "index" else md.stem) / "index.html").read_text()
        for name in module.__all__:
            assert f'id="{module.__name__}.{name}"' in page, (module.__name__, name)
    # the command-line page is the parser's own help, command by command
    import argparse

    from lipschitz_rnn.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    cli = (site / "cli" / "index.html").read_text()
    assert len(sub.choices) > 10
    for name in sub.choices:
        assert f"<code>{name}</code>" in cli, name
    # the home page is the README
    assert "Quick start" in (site / "index.html").read_text()
