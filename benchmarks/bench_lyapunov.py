"""Benchmark lipschitz_rnn.analysis.lyapunov_spectrum against a dense-Jacobian QR loop.

    python benchmarks/bench_lyapunov.py                  # full workload (a few minutes)
    python benchmarks/bench_lyapunov.py --quick          # small shapes, one repeat
    python benchmarks/bench_lyapunov.py --threads 1 --json out.json

Workload (issue): the full spectrum (k = 128) of a hidden-128 Lipschitz RNN over 1000 input steps,
batch 16, float64, on CPU -- a default-initialised cell with one input, and one (euler, eps 0.03)
with larger weights and 8 inputs; plus an LSTM-128 (state (h, c): k = 256) and the cost against
k (8, 32, 128).

Baseline, written here: the textbook loop -- per step the dense Jacobians J (batch, n, n) of the
model's own step by torch.func.vmap(torch.func.jacrev(.)), Q <- J @ Q, Householder QR
(torch.linalg.qr) every step, accumulate log |diag R|, float64.

A second baseline for the Lipschitz rows, ``analytic dense``: the same loop with the Euler step's
Jacobian written out (``I + eps (A + diag(1 - tanh^2) W)``) instead of jacrev.

``--solver rk2`` times the RK2 cell. (The row ``auto, stages via rk_step`` of earlier records,
docs/benchmarks.md, switched a private function of the package off; the benchmarks use public
names only, so it is gone.)

Rows: ``fast r=1`` is lyapunov_spectrum with reorth_every=1 (same QR schedule as the baseline);
``fast auto`` is the default call, reorth_every="auto" (same exponents in exact arithmetic; QR
only when the basis has grown ill-conditioned, here every 32 steps). Timings are medians of interleaved repeats
(baseline and fast variants alternate within each repeat), ratios are baseline / row, and the
exponents of every row are compared with the baseline's (max |difference|, must be <= 1e-3).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import warnings

import torch
from torch import nn

from lipschitz_rnn.analysis import lyapunov_spectrum
from lipschitz_rnn.models import LipschitzRNNCell

DT = torch.float64


def initial_basis(n: int, k: int) -> torch.Tensor:
    """The orthonormal (n, k) start ``lyapunov_spectrum`` uses by default: QR (``diag R > 0``)
    of a standard normal matrix drawn from ``torch.Generator().manual_seed(0)``."""
    G = torch.randn(n, k, generator=torch.Generator().manual_seed(0), dtype=DT)
    Q, R = torch.linalg.qr(G)
    return Q * torch.sign(torch.diagonal(R))


# ----------------------------------------------------------------------------------------------
# the baseline
# ----------------------------------------------------------------------------------------------
def dense_baseline(step, drive, h0: torch.Tensor, k: int) -> torch.Tensor:
    """Dense-Jacobian QR loop; ``step(h, u)`` on (B, n) float64 states, ``drive`` (T, B, .)."""
    B, n = h0.shape
    Q = initial_basis(n, k).unsqueeze(0).expand(B, n, k).contiguous()
    jac = torch.func.vmap(
        torch.func.jacrev(lambda hb, ub: step(hb.unsqueeze(0), ub.unsqueeze(0)).squeeze(0))
    )
    acc = torch.zeros(B, k, dtype=DT)
    h = h0
    with torch.no_grad():
        for u in drive.unbind(0):
            J = jac(h, u)  # (B, n, n)
            h = step(h, u)
            Q, R = torch.linalg.qr(J @ Q)
            acc += torch.log(torch.diagonal(R, dim1=-2, dim2=-1).abs())
    return (acc / drive.shape[0]).sort(-1, descending=True).values


def analytic_dense_lipschitz(cell, drive, h0: torch.Tensor, k: int) -> torch.Tensor:
    """The same textbook loop with the Euler step's Jacobian written out, not by autograd:
    ``J = I + eps (A + diag(1 - tanh^2(W h + u)) W)``; ``drive`` holds ``u = U x + b``."""
    A, W, _ = cell.recurrence()
    eps, (B, n) = cell.eps, h0.shape
    eye = torch.eye(n, dtype=DT)
    Q = initial_basis(n, k).unsqueeze(0).expand(B, n, k).contiguous()
    acc = torch.zeros(B, k, dtype=DT)
    h = h0
    with torch.no_grad():
        for u in drive.unbind(0):
            s = torch.tanh(h @ W.T + u)
            J = eye + eps * (A + (1 - s * s).unsqueeze(-1) * W)  # (B, n, n)
            h = h + eps * (h @ A.T + s)
            Q, R = torch.linalg.qr(J @ Q)
            acc += torch.log(torch.diagonal(R, dim1=-2, dim2=-1).abs())
    return (acc / drive.shape[0]).sort(-1, descending=True).values


def lipschitz_case(H: int, input_size: int, seed: int = 0, default_init: bool = False,
                   solver: str = "euler"):
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        if default_init:  # every other setting at its default (eps 0.03)
            cell = LipschitzRNNCell(input_size, H, solver=solver, dtype=DT)
        else:
            # M_A, M_W entries of std 1/sqrt(H) (init_std / H): a spectrum that is not trivial
            cell = LipschitzRNNCell(input_size, H, eps=0.03, init_std=H**0.5, solver=solver,
                                    dtype=DT)
    ctx = cell.recurrence()
    return cell, (lambda h, u: cell.step(h, u, ctx)), cell.input_projection, H


def lstm_case(H: int, input_size: int, seed: int = 0):
    torch.manual_seed(seed)
    lstm = nn.LSTM(input_size, H, dtype=DT)
    w_ih, w_hh, b_ih, b_hh = lstm.weight_ih_l0, lstm.weight_hh_l0, lstm.bias_ih_l0, lstm.bias_hh_l0

    def step(s, u):  # s = [h, c], u = x W_ih^T + b_ih
        h, c = s[:, :H], s[:, H:]
        i, f, g, o = (u + h @ w_hh.T + b_hh).chunk(4, -1)
        c2 = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.cat([torch.sigmoid(o) * torch.tanh(c2), c2], -1)

    proj = lambda x: x @ w_ih.T + b_ih
    return lstm, step, proj, 2 * H


# ----------------------------------------------------------------------------------------------
def _timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def run_case(name, case, *, T, B, k, repeats, input_size, auto=True, progress=print):
    model, step, proj, n = case
    g = torch.Generator().manual_seed(1)
    x = torch.randn(T, B, input_size, generator=g, dtype=DT)
    with torch.no_grad():
        drive = proj(x).detach()
    h0 = torch.zeros(B, n, dtype=DT)
    variants = {
        "dense baseline": lambda s=T: dense_baseline(step, drive[:s], h0, k),
        "fast r=1": lambda s=T: lyapunov_spectrum(model, x[:s], k=k, reorth_every=1).exponents,
    }
    if isinstance(model, LipschitzRNNCell) and model.solver == "euler":
        variants["analytic dense"] = lambda s=T: analytic_dense_lipschitz(model, drive[:s], h0, k)
    if auto:  # the default call
        variants["fast auto"] = lambda s=T: lyapunov_spectrum(model, x[:s], k=k)
    for fn in variants.values():  # warm-up (functorch transforms, allocator), untimed
        fn(min(T, 3))
    times: dict[str, list[float]] = {v: [] for v in variants}
    results: dict[str, torch.Tensor] = {}
    blocks = None
    for r in range(repeats):
        for v, fn in variants.items():
            progress(f"{name} k={k} repeat {r + 1}/{repeats}: {v}")
            dt_, out = _timed(fn)
            if not isinstance(out, torch.Tensor):
                blocks = out.reorth_every
                out = out.exponents
            times[v].append(dt_)
            results[v] = out
    base = statistics.median(times["dense baseline"])
    rows = []
    for v in variants:
        med = statistics.median(times[v])
        err = float((results[v] - results["dense baseline"]).abs().max())
        rows.append(
            {
                "case": name,
                "T": T,
                "B": B,
                "n": n,
                "k": k,
                "variant": v,
                "seconds": med,
                "ms_per_step": 1e3 * med / T,
                "speedup": base / med,
                "max_abs_diff": err,
                "lambda_1": float(results[v].mean(0)[0]),
                "auto_block": blocks if v == "fast auto" else None,
            }
        )
    return rows


def format_rows(rows) -> str:
    head = "| case | n | k | T | B | variant | s (median) | ms/step | speed-up vs baseline | max abs diff | λ1 |"
    lines = [head, "|" + "---|" * 11]
    for r in rows:
        var = r["variant"] + (f" (block {r['auto_block']})" if r["auto_block"] else "")
        lines.append(
            f"| {r['case']} | {r['n']} | {r['k']} | {r['T']} | {r['B']} | {var} | "
            f"{r['seconds']:.2f} | {r['ms_per_step']:.2f} | {r['speedup']:.2f}x | "
            f"{r['max_abs_diff']:.1e} | {r['lambda_1']:.5f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small shapes and one repeat")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--steps", type=int, default=1000, help="T of the Lipschitz workload")
    p.add_argument("--lstm-steps", type=int, default=200, help="T of the LSTM-128 workload")
    p.add_argument("--skip-k-sweep", action="store_true")
    p.add_argument(
        "--default-only",
        action="store_true",
        help="only the default-initialised cell (the issue-12 comparison: default call against "
        "the analytic dense loop)",
    )
    p.add_argument("--solver", default="euler", help="scheme of the Lipschitz cells")
    p.add_argument("--json", default=None, help="write the rows to this file")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    progress = lambda m: print(f"... {m}", file=sys.stderr, flush=True)
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    if args.quick:
        H, T, B, Hl, Tl, reps, ks = 32, 100, 4, 16, 50, 1, (8, 32)
    else:
        H, T, B, Hl, Tl, reps, ks = 128, args.steps, 16, 128, args.lstm_steps, args.repeats, (8, 32)
    IN = 8
    rows = run_case(
        f"lipschitz default ({args.solver})",
        lipschitz_case(H, 1, default_init=True, solver=args.solver),
        T=T,
        B=B,
        k=H,
        repeats=reps,
        input_size=1,
        progress=progress,
    )
    if args.default_only:
        return _report(rows, args, load)
    rows += run_case(
        f"lipschitz-{args.solver}",
        lipschitz_case(H, IN, solver=args.solver),
        T=T,
        B=B,
        k=H,
        repeats=reps,
        input_size=IN,
        progress=progress,
    )
    rows += run_case(
        "lstm",
        lstm_case(Hl, IN),
        T=Tl,
        B=B,
        k=2 * Hl,
        repeats=reps,
        input_size=IN,
        progress=progress,
    )
    if not args.skip_k_sweep:
        for k in ks:
            rows += run_case(
                f"lipschitz-{args.solver}",
                lipschitz_case(H, IN, solver=args.solver),
                T=T,
                B=B,
                k=k,
                repeats=reps,
                input_size=IN,
                progress=progress,
            )
    return _report(rows, args, load)


def _report(rows, args, load) -> int:
    print(format_rows(rows))
    load_end = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(
        f"\ntorch {torch.__version__}, threads {torch.get_num_threads()}, "
        f"{platform.processor() or platform.machine()}, load average at start {load}, "
        f"at end {load_end}"
    )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(
                {
                    "rows": rows,
                    "load_start": load,
                    "load_end": load_end,
                    "threads": torch.get_num_threads(),
                },
                fh,
                indent=1,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
