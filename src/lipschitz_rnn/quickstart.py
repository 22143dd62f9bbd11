"""The README's main job (interim): train a Lipschitz RNN on the adding problem and certify it.

Replaced by the full training pipeline on the bundled digits data set once it lands.
"""

from __future__ import annotations

import time

import torch

from .models import LipschitzRNN, SequenceModel
from .stability import certify


def _adding_batch(n: int, T: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    values = torch.rand(T, n, generator=g)
    marks = torch.zeros(T, n)
    idx = torch.stack([torch.randperm(T, generator=g)[:2] for _ in range(n)], 1)
    marks.scatter_(0, idx, 1.0)
    return torch.stack([values, marks], -1), (values * marks).sum(0, keepdim=True).T


def run_quickstart(args, console) -> int:
    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed)
    T = 30
    model = SequenceModel(LipschitzRNN(2, 32, solver="rk2", eps=0.1), 1)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    x_test, y_test = _adding_batch(512, T, g)
    steps = 50 * (args.epochs or 6)
    t0 = time.perf_counter()
    for step in range(steps):
        x, y = _adding_batch(64, T, g)
        loss = torch.nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if (step + 1) % 50 == 0:
            with torch.no_grad():
                test = torch.nn.functional.mse_loss(model(x_test), y_test).item()
            console.print(f"step {step + 1:4d}  train mse {loss.item():.4f}  test mse {test:.4f}")
    console.print(f"adding problem (T={T}): test MSE {test:.4f} (baseline 0.167) "
                  f"in {time.perf_counter() - t0:.1f} s")
    for cert in certify(model):
        console.print(str(cert))
    return 0
