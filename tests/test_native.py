"""The native CPU kernels of the fused scan: build, cache, fallbacks, and agreement with the
float64 reference recurrence."""

import warnings

import pytest
import torch
from fused_helpers import SOLVERS, TOL, can_build_native, scan_inputs

from lipschitz_rnn.models import _native
from lipschitz_rnn.models.fused import fused_backend, lipschitz_scan, reference_scan


# --- the native CPU kernels ------------------------------------------------------------------
@pytest.mark.skipif(not can_build_native(), reason="no C++ toolchain")
def test_native_kernels_build_here():
    assert _native.load() is not None, _native.native_status()
    assert _native.native_status().startswith("loaded (")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("threads", [1, 3])
def test_native_row_blocks_equal_reference(backend, solver, dtype, threads):
    # B = 37 rows split into uneven blocks run by several threads (3 > cores is fine): every
    # output and gradient equals the plain autograd recurrence in float64 (1e-12). float32 results
    # are held against the float64 recurrence of the same inputs, to 2e-6: the weight gradients
    # sum 13 * 37 * 2 products, and float32 orderings of that sum measured up to 1.0e-6 from the
    # exact value (both backends, on the worst seed tried; the plain loop 1.6e-7 there).
    torch.manual_seed(11)
    T, B, H = 13, 37, 20
    inputs = scan_inputs(T, B, H, dtype=dtype, scale=0.3)
    G = torch.randn(T, B, H, dtype=dtype)
    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        hs = lipschitz_scan(*inputs, 0.1, solver)
        got = torch.autograd.grad(hs, inputs, G)
    finally:
        torch.set_num_threads(prev)
    exact = [x.detach().double().requires_grad_() for x in inputs]
    ref_hs = reference_scan(*exact, 0.1, solver)
    ref = torch.autograd.grad(ref_hs, exact, G.double())
    tol = 2e-6 if dtype == torch.float32 else TOL[dtype]
    for name, a, b in zip(["hs", "du", "dh0", "dA", "dW"], [hs, *got], [ref_hs, *ref], strict=True):
        assert a.dtype == dtype
        err = ((a.double() - b).abs().max() / b.abs().max()).item()
        assert err <= tol, f"{name}: relative error {err:.3g} > {tol}"


def test_backend_selection_and_fallback(monkeypatch):
    with pytest.raises(ValueError, match="backend must be one of"):
        with fused_backend("cuda-graphs"):
            pass
    inputs = scan_inputs(6, 4, 5)
    with fused_backend("torch"):
        ref = lipschitz_scan(*inputs, 0.1, "rk2")
    # a failed build: one warning, "auto" falls back to the PyTorch kernels, "native" says why
    monkeypatch.setattr(_native, "_module", _native._UNSET)

    def broken_build():
        raise OSError("no compiler here")

    monkeypatch.setattr(_native, "_build", broken_build)
    with pytest.warns(RuntimeWarning, match="no compiler here"):
        assert _native.load() is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # cached: no second warning
        assert _native.load() is None
        assert torch.equal(lipschitz_scan(*inputs, 0.1, "rk2"), ref)
    with fused_backend("native"), pytest.raises(RuntimeError, match="no compiler here"):
        lipschitz_scan(*inputs, 0.1, "rk2")


def test_native_disabled_by_environment(monkeypatch):
    monkeypatch.setattr(_native, "_module", _native._UNSET)
    monkeypatch.setenv("LIPSCHITZ_RNN_NATIVE", "0")
    assert _native.load() is None
    assert "LIPSCHITZ_RNN_NATIVE" in _native.native_status()


@pytest.mark.skipif(not can_build_native(), reason="no C++ toolchain")
def test_native_build_is_cached_and_atomic(monkeypatch, tmp_path):
    monkeypatch.setenv("LIPSCHITZ_RNN_KERNEL_DIR", str(tmp_path / "kernels"))
    path = _native._build()
    assert path.parent == tmp_path / "kernels" and path.suffix == ".so"
    stamp = path.stat().st_mtime_ns
    assert _native._build() == path and path.stat().st_mtime_ns == stamp  # reused, not rebuilt
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp files left
    kernels = _native._open(path)
    u, h0, A, W = (x.detach() for x in scan_inputs(4, 9, 3))
    AWt = torch.cat([A, W], 0).t().contiguous()
    hs, S = kernels.euler_forward(u, h0, AWt, 0.1, True)
    assert torch.allclose(hs, reference_scan(u, h0, A, W, 0.1, "euler"), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="shape"):
        kernels.euler_forward(u, h0[:2], AWt, 0.1, False)
    with pytest.raises(TypeError, match="float32 or float64"):
        kernels.euler_forward(u, h0.float(), AWt, 0.1, False)
    with pytest.raises(ValueError, match="contiguous"):
        kernels.euler_forward(u.transpose(1, 2).contiguous().transpose(1, 2), h0, AWt, 0.1, False)


def test_native_compiler_failure_falls_back(monkeypatch, tmp_path):
    monkeypatch.setattr(_native, "_module", _native._UNSET)
    monkeypatch.setenv("LIPSCHITZ_RNN_KERNEL_DIR", str(tmp_path))
    monkeypatch.setenv("CXX", "false")  # a "compiler" that always fails
    with pytest.warns(RuntimeWarning, match="false failed"):
        assert _native.load() is None
    assert list(tmp_path.iterdir()) == []  # the failed build left nothing behind


@pytest.mark.skipif(not can_build_native(), reason="no C++ toolchain")
def test_native_build_without_openmp(monkeypatch, tmp_path):
    # a compiler without OpenMP: the build falls back to serial row blocks, same results
    cxx = tmp_path / "cxx-no-openmp"
    cxx.write_text('#!/bin/sh\ncase "$*" in *-fopenmp*) exit 1;; esac\nexec c++ "$@"\n')
    cxx.chmod(0o755)
    monkeypatch.setenv("CXX", str(cxx))
    monkeypatch.setenv("LIPSCHITZ_RNN_KERNEL_DIR", str(tmp_path / "kernels"))
    kernels = _native._open(_native._build())
    assert kernels._blocks(64) == 1
    u, h0, A, W = (x.detach() for x in scan_inputs(5, 37, 6))
    AWt = torch.cat([A, W], 0).t().contiguous()
    hs, S1, Y, S2 = kernels.two_stage_forward(u, h0, AWt, 0.05, 0.1, False, True)
    assert torch.allclose(hs, reference_scan(u, h0, A, W, 0.1, "rk2"), rtol=0, atol=1e-12)


def test_native_not_attempted_off_linux(monkeypatch):
    monkeypatch.setattr(_native, "_module", _native._UNSET)
    monkeypatch.setattr(_native.sys, "platform", "darwin")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing the user could fix: no warning
        assert _native.load() is None
    assert "Linux only" in _native.native_status()
