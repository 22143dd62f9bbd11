"""Benchmark the gradient-flossing loss against a plain QR-every-step loop with autograd.

    python benchmarks/bench_flossing.py               # both workloads, 5 interleaved repeats
    python benchmarks/bench_flossing.py --quick       # small shapes, 2 repeats
    python benchmarks/bench_flossing.py --json out.json
    python benchmarks/bench_flossing.py --workload reference   # one workload only

What is timed: ``loss.backward()`` including the forward, i.e. one flossing step's gradient, of
the mean squared first ``k`` Lyapunov exponents of a tanh ``torch.nn.RNN`` driven by Gaussian
inputs, float64, on the CPU.

Workloads:

* ``issue``: N = 128, k = 64, T = 300, batch 8 (the bound: at most 0.5x the baseline's time);
* ``reference``: N = 80, k = 75, T = 71, batch 1 (the size of the reference Julia example of
  Engelken 2023: 55 flossing steps after 16 transient ones);
* ``near-neutral``: the reference size with an orthogonal ``W_hh`` and input weights x0.1, a
  network near where flossing leads (exponents near 0), whose ``"auto"`` blocks grow to 32
  steps.

Baseline, written here from the formulas: per step ``h = tanh(W_ih x + b + W_hh h)``, the
tangent basis ``Q <- diag(1 - h^2) W_hh Q``, Householder QR (``torch.linalg.qr``) every step,
``lambda = sum log |diag R| / T``, the loss ``mean((lambda - target)^2)``; autograd through it
all (the QR's own backward included). Same initial basis as the library's.

Rows: ``flossing_loss`` with the default ``reorth_every="auto"`` and with ``reorth_every=1``
(the baseline's schedule), and a timing floor: ``reorth_every=T``, one QR at the end, i.e. the
tangent maps and their backward alone (not an estimate: over T steps the contracting directions
are lost to round-off, so its loss and gradient differ from the baseline's). Timings are
medians over interleaved repeats (baseline and rows alternate within each repeat); ratios are
row / baseline (< 1 is faster). Every row's loss and gradient are compared with the baseline's
(relative difference).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import torch
from torch import nn

from lipschitz_rnn.analysis import flossing_loss

DT = torch.float64


def initial_basis(n: int, k: int) -> torch.Tensor:
    """The orthonormal (n, k) start the library uses by default: QR (``diag R > 0``) of a
    standard normal matrix drawn from ``torch.Generator().manual_seed(0)``."""
    G = torch.randn(n, k, generator=torch.Generator().manual_seed(0), dtype=DT)
    Q, R = torch.linalg.qr(G)
    return Q * torch.sign(torch.diagonal(R))


def plain_loss(rnn: nn.RNN, x: torch.Tensor, k: int, target: float = 0.0) -> torch.Tensor:
    """The textbook loop (see the module docstring); ``x`` (T, B, F) float64."""
    W_ih, W_hh = rnn.weight_ih_l0.to(DT), rnn.weight_hh_l0.to(DT)
    b = (rnn.bias_ih_l0 + rnn.bias_hh_l0).to(DT)
    T, B, _ = x.shape
    n = W_hh.shape[0]
    Q = initial_basis(n, k).unsqueeze(0).expand(B, n, k)
    h = torch.zeros(B, n, dtype=DT)
    acc = torch.zeros(B, k, dtype=DT)
    u = x @ W_ih.T + b
    for t in range(T):
        h = torch.tanh(u[t] + h @ W_hh.T)
        Q = (1.0 - h * h).unsqueeze(-1) * (W_hh @ Q)
        Q, R = torch.linalg.qr(Q)
        acc = acc + torch.log(torch.diagonal(R, dim1=-2, dim2=-1).abs())
    lam = (acc / T).sort(-1, descending=True).values
    return ((lam - target) ** 2).mean()


def _grad(fn, rnn):
    rnn.zero_grad(set_to_none=True)
    t0 = time.perf_counter()
    loss = fn()
    loss.backward()
    dt = time.perf_counter() - t0
    g = torch.cat([p.grad.reshape(-1).to(DT) for p in rnn.parameters()])
    return dt, float(loss.detach()), g


def run(name: str, n: int, k: int, T: int, batch: int, repeats: int) -> dict:
    torch.manual_seed(0)
    # float64 parameters: the gradients compared below are not rounded to float32
    rnn = nn.RNN(4, n).double()
    with torch.no_grad():
        if name.startswith("near-neutral"):  # where flossing ends up: blocks grow to 32 steps
            nn.init.orthogonal_(rnn.weight_hh_l0)
            rnn.weight_ih_l0.mul_(0.1)
        else:  # Gaussian recurrent weights of gain 1 (edge of chaos), as in the paper
            rnn.weight_hh_l0.normal_(0.0, 1.0 / n**0.5)
    x = torch.randn(T, batch, 4, dtype=DT)
    rows = {
        "baseline (QR every step)": lambda: plain_loss(rnn, x, k),
        "flossing_loss auto": lambda: flossing_loss(rnn, x, k=k),
        "flossing_loss r=1": lambda: flossing_loss(rnn, x, k=k, reorth_every=1),
        "floor: tangent maps only": lambda: flossing_loss(rnn, x, k=k, reorth_every=T),
    }
    times: dict[str, list[float]] = {r: [] for r in rows}
    values, grads = {}, {}
    for _ in range(repeats):
        for r, fn in rows.items():
            dt, v, g = _grad(fn, rnn)
            times[r].append(dt)
            values[r], grads[r] = v, g
    base = "baseline (QR every step)"
    out = {"workload": name, "n": n, "k": k, "T": T, "batch": batch, "repeats": repeats, "rows": {}}
    for r in rows:
        med = statistics.median(times[r])
        out["rows"][r] = {
            "median_s": med,
            "ratio_to_baseline": med / statistics.median(times[base]),
            "loss": values[r],
            "loss_rel_diff": abs(values[r] - values[base]) / abs(values[base]),
            "grad_rel_diff": float((grads[r] - grads[base]).norm() / grads[base].norm()),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None)
    p.add_argument("--workload", choices=["issue", "reference", "near-neutral"],
                   action="append",
                   help="run only this workload (repeatable; default: both)")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    reps = a.repeats or (2 if a.quick else 5)
    shapes = (
        [("issue (small)", 32, 16, 60, 4), ("reference (small)", 20, 18, 30, 1)]
        if a.quick
        else [("issue", 128, 64, 300, 8), ("reference", 80, 75, 71, 1),
              ("near-neutral", 80, 75, 71, 1)]
    )
    if a.workload:
        shapes = [s for s in shapes if s[0].split()[0] in a.workload]
    # the reference-size workloads take ~0.04 s a call: 4x the repeats cost little and steady
    # their medians on a shared machine
    results = {
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "cpus": os.cpu_count(), "threads": a.threads, "torch": torch.__version__,
        "python": sys.version.split()[0],
        "workloads": [run(*s, reps * (1 if s[0].startswith("issue") else 4))
                      for s in shapes],
    }
    for w in results["workloads"]:
        print(f"{w['workload']}: N={w['n']} k={w['k']} T={w['T']} batch={w['batch']}")
        for r, v in w["rows"].items():
            print(f"  {r:<26} {v['median_s']:8.3f} s  x{v['ratio_to_baseline']:.3f}  "
                  f"loss {v['loss']:.6g} (rel diff {v['loss_rel_diff']:.1e}, grad "
                  f"{v['grad_rel_diff']:.1e})")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
