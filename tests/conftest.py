import pytest
import torch

from lipschitz_rnn import cli


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(autouse=True)
def _no_process_settings(monkeypatch):
    # the CLI's process-wide CPU settings (glibc malloc options, flush-denormal) cannot be undone;
    # keep them out of the test process so every test sees torch's defaults
    monkeypatch.setattr(cli, "_process_settings", lambda: "process settings skipped in tests")
