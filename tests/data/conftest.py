"""Data tests never touch the network: downloads are disabled and ``open_url`` only serves file://."""

import json
import sys

import pytest

from lipschitz_rnn.data import _common

_REAL_OPEN_URL = _common.open_url


def _local_only(url, timeout=60.0):
    if not url.startswith("file:"):
        raise AssertionError(f"test tried to reach the network: {url}")
    return _REAL_OPEN_URL(url, timeout)


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    monkeypatch.setenv(_common.NO_DOWNLOAD_ENV, "1")
    monkeypatch.setattr(_common, "open_url", _local_only)
    yield


@pytest.fixture
def assert_serialisable():
    """Checks that a task's meta survives JSON and TOML round trips (no None, no arrays)."""

    def check(meta):
        assert json.loads(json.dumps(meta)) == meta
        tomli_w = pytest.importorskip("tomli_w")
        if sys.version_info >= (3, 11):
            import tomllib
        else:  # pragma: no cover
            tomllib = pytest.importorskip("tomli")
        assert tomllib.loads(tomli_w.dumps(meta)) == meta

    return check
