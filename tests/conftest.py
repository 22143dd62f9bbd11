import pytest
import torch
from fused_helpers import can_build_native

from lipschitz_rnn import process
from lipschitz_rnn.models import _native
from lipschitz_rnn.models.fused import fused_backend


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(autouse=True)
def _no_process_settings(monkeypatch):
    # the CLI's process-wide CPU settings (glibc malloc options, flush-denormal) cannot be undone;
    # keep them out of the test process so every test sees torch's defaults
    monkeypatch.setattr(process, "configure_process", lambda: "process settings skipped in tests")


@pytest.fixture(params=["native", "torch"])
def backend(request):
    """Runs the test with each kernel backend of the fused scan."""
    if request.param == "native" and _native.load() is None:
        if can_build_native():
            pytest.fail(f"native kernels failed to build: {_native.native_status()}")
        pytest.skip("no C++ toolchain for the native kernels")
    with fused_backend(request.param):
        yield request.param


@pytest.fixture(autouse=True)
def _data_files_as_written(monkeypatch, tmp_path_factory):
    # tests write tiny data files under the canonical names, which cannot match the canonical
    # checksums: skip the local-file verification (tests of it turn it back on) and keep its
    # record out of the user's cache
    monkeypatch.setenv("LIPSCHITZ_RNN_VERIFY_DATA", "0")
    monkeypatch.setenv("LIPSCHITZ_RNN_CACHE", str(tmp_path_factory.mktemp("cache")))
