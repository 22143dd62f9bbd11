"""Shared inputs and tolerances of the fused-scan tests (test_fused.py, test_native.py)."""

import copy
import shutil
import sys

import torch

from lipschitz_rnn import LipschitzRNN

SOLVERS = ["euler", "rk2", "heun"]
# max |a - b| <= TOL * max |b|, per tensor
TOL = {torch.float32: 1e-6, torch.float64: 1e-12}


def assert_rel_close(a, b, dtype, what=""):
    assert a.shape == b.shape, what
    scale = b.abs().max().clamp_min(1e-30)
    err = (a - b).abs().max() / scale
    assert err <= TOL[dtype], f"{what}: relative error {err:.3g} > {TOL[dtype]}"


def scan_inputs(T, B, H, dtype=torch.float64, scale=0.5, requires_grad=True):
    u = torch.randn(T, B, H, dtype=dtype)
    h0 = torch.randn(B, H, dtype=dtype)
    A = torch.randn(H, H, dtype=dtype) * scale
    W = torch.randn(H, H, dtype=dtype) * scale
    return [x.requires_grad_(requires_grad) for x in (u, h0, A, W)]


def make_pair(solver, dtype, **kw):
    fused = LipschitzRNN(
        3, 6, solver=solver, eps=0.1, init_std=4.0, dtype=dtype, **kw
    )
    plain = copy.deepcopy(fused)
    plain.use_fused = False
    fused.use_fused = True
    return fused, plain


def run_layer(rnn, x, h0, wo, wh):
    x = x.detach().clone().requires_grad_()
    h0 = h0.detach().clone().requires_grad_()
    out, h_n = rnn(x, h0)
    loss = (out * wo).sum() + (h_n * wh).sum()
    params = [p for _, p in sorted(rnn.named_parameters())]
    grads = torch.autograd.grad(loss, [x, h0, *params])
    return out.detach(), h_n.detach(), grads


def can_build_native() -> bool:
    return sys.platform.startswith("linux") and shutil.which("c++") is not None
