"""Forward+backward of the Lipschitz layer at the sequential-MNIST shape, in a plain script.

This script changes no process setting (no malloc tuning, no flush-to-zero): it measures what a
user's own training script gets. Rows (all in the same run, interleaved, median of repeats):

  layer        -- LipschitzRNN as users call it (the fused path when it is available)
  layer-plain  -- LipschitzRNN with the fused path off (the generic per-step scan)
  naive-loop   -- the paper authors' style of reference loop: per step, the input projection,
                  A and W products, tanh and the update, each as separate autograd ops
  nn.RNN       -- torch.nn.RNN(tanh) of the same size

Usage: python benchmarks/bench_core.py [--T 784 --batch 128 --hidden 128 --repeats 7 --solver euler]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from lipschitz_rnn import LipschitzRNN
from lipschitz_rnn.models import rk_step


def time_interleaved(steps: dict[str, Callable[[], None]], repeats: int) -> dict[str, list[float]]:
    """Seconds of each step over ``repeats`` round-robin rounds after one untimed warm-up round
    (every step of a round runs under the same machine load, so ratios between them are fair)."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    for r in range(repeats + 1):
        for name, step in steps.items():
            t0 = time.perf_counter()
            step()
            if r > 0:
                times[name].append(time.perf_counter() - t0)
    return times


def naive_loop(rnn: LipschitzRNN):
    cell = rnn.cells[0]

    def run(x):
        A, W = cell.A, cell.W
        h = x.new_zeros(x.shape[1], cell.hidden_size)
        outs = []
        for t in range(x.shape[0]):
            u = x[t] @ cell.weight_ih.T + cell.bias_ih
            h = rk_step(lambda z, u=u: z @ A.T + torch.tanh(z @ W.T + u), h, cell.eps, cell.solver)
            outs.append(h)
        return torch.stack(outs)

    return run


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--T", type=int, default=784)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--input", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--solver", default="euler", choices=["euler", "rk2", "heun"])
    a = ap.parse_args()
    torch.manual_seed(0)
    x = torch.randn(a.T, a.batch, a.input)
    layer = LipschitzRNN(a.input, a.hidden, solver=a.solver)
    plain = LipschitzRNN(a.input, a.hidden, solver=a.solver)
    plain.load_state_dict(layer.state_dict())
    plain.use_fused = False
    ref = torch.nn.RNN(a.input, a.hidden)
    loop = naive_loop(layer)
    cases = {
        "layer": lambda: layer(x)[0],
        "layer-plain": lambda: plain(x)[0],
        "naive-loop": lambda: loop(x),
        "nn.RNN(tanh)": lambda: ref(x)[0],
    }
    steps = {name: (lambda fn=fn: fn().sum().backward()) for name, fn in cases.items()}
    times = time_interleaved(steps, a.repeats)
    base = statistics.median(times["naive-loop"])
    print(f"T={a.T} batch={a.batch} hidden={a.hidden} input={a.input} solver={a.solver} "
          f"threads={torch.get_num_threads()} repeats={a.repeats} (plain process)")
    print(f"{'row':<14}{'s/iter':>10}{'vs naive-loop':>16}")
    for name, ts in times.items():
        m = statistics.median(ts)
        print(f"{name:<14}{m:>10.4f}{m / base:>16.2f}")


if __name__ == "__main__":
    main()
