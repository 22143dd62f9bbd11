"""Reused storage of the fused scan's large arrays (models/_workspace.py): reuse only when nothing
holds the storage, identical results, fewer page faults in a plain process."""

import copy
import json
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from fused_helpers import assert_rel_close

from lipschitz_rnn import LipschitzRNN
from lipschitz_rnn.models import _workspace
from lipschitz_rnn.models.fused import (
    fused_backend,
    fused_buffer_reuse,
    release_fused_buffers,
)

LIKE = torch.empty(0)


@pytest.fixture(autouse=True)
def small_buffers(monkeypatch):
    """Pool every request (tiny test shapes) and start each test with an empty pool."""
    monkeypatch.setattr(_workspace, "MIN_BYTES", 0)
    monkeypatch.setattr(_workspace, "_POOL", {})


def ptr(t):
    return t.untyped_storage().data_ptr()


def test_reused_only_when_nothing_holds_it():
    a = _workspace.empty((10, 10), LIKE)
    p = ptr(a)
    assert a._base is None and a.is_contiguous() and a.shape == (10, 10)
    del a
    b = _workspace.empty((10, 10), LIKE)
    assert ptr(b) == p  # reused
    b.fill_(1.0)
    c = _workspace.empty((10, 10), LIKE)  # b is held: a new storage
    assert ptr(c) != p
    c.fill_(2.0)
    assert torch.equal(b, torch.ones(10, 10))
    # any holder keeps a storage out of reuse: a view, a numpy array, an autograd saved tensor
    view, arr = b[3], c.numpy()
    del b, c
    w = torch.ones(10, 10, requires_grad=True)
    d = _workspace.empty((10, 10), LIKE).fill_(3.0)
    y = (w * d).sum()  # saves d
    dp = ptr(d)
    del d
    e = _workspace.empty((10, 10), LIKE)
    assert ptr(e) not in (p, ptr(view), dp) and ptr(view) == p
    assert torch.equal(view, torch.ones(10)) and (arr == 2.0).all()
    y.backward()
    assert torch.equal(w.grad, torch.full((10, 10), 3.0))
    del view, arr, y, e
    kept = {entry.storage.data_ptr() for entry in _workspace._POOL["cpu"]}
    assert len(kept) == 4 and ptr(_workspace.empty((10, 10), LIKE)) in kept  # all idle again


def test_size_rule_release_and_switch():
    a = _workspace.empty((100,), LIKE)
    p = ptr(a)
    del a
    small = _workspace.empty((10,), LIKE)  # less than half: not served by the 400-byte storage
    assert ptr(small) != p
    half = _workspace.empty((60,), LIKE)
    assert ptr(half) == p and half.shape == (60,)
    total, idle = _workspace.held_bytes()
    assert total == 440 and idle == 0
    del small
    assert release_fused_buffers() == 40
    assert _workspace.held_bytes() == (400, 0)
    with fused_buffer_reuse(False):
        fresh = _workspace.empty((100,), LIKE)
    assert _workspace.held_bytes() == (400, 0) and ptr(fresh) != p
    with pytest.raises(TypeError, match="enabled"):
        with fused_buffer_reuse(1):
            pass


def test_pool_bounded(monkeypatch):
    monkeypatch.setattr(_workspace, "MAX_BUFFERS", 3)
    held = [_workspace.empty((8,), LIKE) for _ in range(5)]  # all busy: only 3 are tracked
    assert len(_workspace._POOL["cpu"]) == 3
    del held
    for _ in range(4):
        _workspace.empty((8,), LIKE)
    assert len(_workspace._POOL["cpu"]) == 3


def train_steps(rnn, xs, interleave):
    """Gradients of several forward passes whose graphs overlap in time."""
    out = []
    if interleave:
        graphs = [rnn(x)[0].square().sum() for x in xs]  # all graphs alive at once
        for g in graphs:
            out.append(torch.autograd.grad(g, list(rnn.parameters())))
        return out
    for x in xs:
        loss = rnn(x)[0].square().sum()
        first = torch.autograd.grad(loss, list(rnn.parameters()), retain_graph=True)
        rnn(x * 0.5)[0].sum().backward()  # another call between two backwards of one graph
        second = torch.autograd.grad(loss, list(rnn.parameters()))
        for a, b in zip(first, second, strict=True):
            assert torch.equal(a, b)
        out.append(first)
    return out


@pytest.mark.parametrize("solver", ["euler", "rk2"])
@pytest.mark.parametrize("interleave", [False, True])
def test_layer_results_independent_of_reuse(backend, solver, interleave):
    torch.manual_seed(0)
    rnn = LipschitzRNN(3, 8, num_layers=2, bidirectional=True, solver=solver, init_std=2.0)
    xs = [torch.randn(7, 5, 3) for _ in range(3)]
    with fused_buffer_reuse(False):
        ref_out = [rnn(x)[0] for x in xs]
        ref = train_steps(copy.deepcopy(rnn), xs, interleave)
    kept = [rnn(x)[0] for x in xs]  # outputs the caller keeps are never overwritten
    got = train_steps(rnn, xs, interleave)
    for a, b in zip(kept, ref_out, strict=True):
        assert torch.equal(a, b)
    for ga, gb in zip(got, ref, strict=True):
        for a, b in zip(ga, gb, strict=True):
            assert_rel_close(a, b, torch.float32)


def test_steady_state_reuses_and_saves_less(backend):
    torch.manual_seed(0)
    rnn = LipschitzRNN(1, 16)
    x = torch.randn(20, 4, 1)
    seen = []
    for _ in range(4):
        out, _ = rnn(x)
        seen.append(ptr(out))
        out[-1].sum().backward()
        del out
    assert len(set(seen[1:])) == 1  # the same storage once the previous output is dropped
    total = _workspace.held_bytes()[0]
    for _ in range(3):
        rnn(x)[0][-1].sum().backward()
    assert _workspace.held_bytes()[0] == total  # bounded
    # saved for backward: the states and the tanh values, not the projected input
    big = []

    def pack(t):
        if t.shape == (20, 4, 16):
            big.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        rnn(x)
    assert len(big) == 2


def test_threads_share_the_pool(backend):
    """Layers running in several threads at once (as DataParallel replicas do) never get the
    same storage: every thread's results equal the sequential ones."""
    torch.manual_seed(0)
    rnn = LipschitzRNN(3, 8, solver="rk2", init_std=2.0)
    xs = [torch.randn(9, 4, 3) for _ in range(4)]

    def run(x):
        res = []
        with fused_backend(backend):  # context variables do not reach the worker threads
            for _ in range(5):
                out, h = rnn(x)
                g = torch.autograd.grad(out.square().sum(), list(rnn.parameters()))
                res.append((out.detach(), h.detach(), *g))
        return res

    with fused_buffer_reuse(False):
        ref = [run(x) for x in xs]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(run, xs))
    for a, b in zip(got, ref, strict=True):
        for ra, rb in zip(a, b, strict=True):
            for ta, tb in zip(ra, rb, strict=True):
                assert torch.equal(ta, tb)


PAGE_FAULTS = textwrap.dedent(
    """
    import json, resource, sys, torch
    from lipschitz_rnn import LipschitzRNN
    from lipschitz_rnn.models.fused import fused_buffer_reuse
    torch.set_num_threads(1)
    torch.manual_seed(0)
    T, B, H = 600, 128, 128  # 39 MB per (T, B, H) array: above glibc's 32 MiB mmap threshold
    rnn = LipschitzRNN(1, H)
    x = torch.randn(T, B, 1)
    def step():
        out, _ = rnn(x)
        out[-1].square().sum().backward()
    res = {}
    for reuse in (True, False):
        with fused_buffer_reuse(reuse):
            step(); step()
            r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            step()
            res[str(reuse)] = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0
    print(json.dumps(res))
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc page-fault behaviour")
def test_plain_process_page_faults():
    """In a fresh process without malloc settings, a warm forward+backward faults in about one
    (T, B, H) array (the gradient autograd makes for ``out[-1]``), not five."""
    proc = subprocess.run(
        [sys.executable, "-c", PAGE_FAULTS], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    faults = json.loads(proc.stdout.strip().splitlines()[-1])
    array_pages = 600 * 128 * 128 * 4 // 4096
    assert faults["True"] < 1.5 * array_pages, faults
    assert faults["False"] > 3.5 * array_pages, faults
