"""How much gradient reaches the early steps during training, with and without flossing.

Part of the gradient-flossing experiment (docs/flossing.md, issue 28). Trains the plain tanh RNN
and the RNN with flossing before and during training at one delay, with the settings of
``experiments/flossing.sh``, and measures on one fixed batch of held-out sequences, before the
first epoch (after the flossing phase of a flossed run) and after every epoch,

    g(tau) = mean over the batch of || d loss_T / d h_{T - tau} ||,   tau = 0 .. T - 1,

where ``loss_T`` is the cross-entropy at the last step: the gradient that backpropagation through
time carries ``tau`` steps back. Solving delayed XOR at delay ``d`` needs ``g(d)`` to be
usable, not vanished. The measurement runs in a callback that leaves the run as it is (eval
mode, ``torch.autograd.grad``: no parameter's ``.grad`` and no random number generator is
touched).

    python experiments/flossing_gradients.py --delay 40 --out ~/lrnn-runs/flossing-gradients

writes ``gradients.json`` and ``gradients.png`` into ``--out`` (and the two run directories).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from lipschitz_rnn.data import get_task  # noqa: E402
from lipschitz_rnn.runs import resolve_config  # noqa: E402
from lipschitz_rnn.train import Callback, train  # noqa: E402

SETTINGS = {"hidden_size": 64, "epochs": 15, "batch_size": 16, "optimizer": "adamw", "lr": 1e-3,
            "weight_decay": 0.01, "clip_grad_norm": 1.0, "task.length": 300,
            "task.n_train": 2000, "task.n_valid": 500, "task.n_test": 1000,
            "model.init_scale": 0.2165, "flossing.k": 32, "flossing.warmup": 16,
            "flossing.steps": 55, "flossing.batch": 16, "flossing.lr": 1e-3}
METHODS = {"rnn": {}, "rnn + flossing before and during": {
    "flossing.before": 500, "flossing.every": 5, "flossing.during": 500}}


def backward_gradients(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """``g(tau)`` for ``tau = 0 .. T - 1`` (see the module docstring): the recurrent layer is
    stepped one time step at a time so that every state is a node of the graph."""
    was = model.training
    model.eval()
    try:
        with torch.enable_grad():
            h, states = None, []
            for t in range(x.shape[0]):
                _, h = model.rnn(x[t:t + 1], h)
                states.append(h)
            # the top layer's state is the output at the last step
            loss = F.cross_entropy(model.readout(h[-1]), y[-1], reduction="sum")
            grads = torch.autograd.grad(loss, states)
    finally:
        model.train(was)
    # each state (layers, batch, hidden): the norm over layers and units, the mean over the batch
    norms = torch.stack([g.transpose(0, 1).reshape(g.shape[1], -1).norm(dim=1).mean()
                         for g in grads])
    return norms.flip(0).detach().numpy()  # index tau = T - 1 - t


class GradientProbe(Callback):
    """Records :func:`backward_gradients` at the start of epoch 1 (after a flossing phase that
    runs before it) and at the end of every epoch."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y, self.curves = x, y, []

    def on_epoch_start(self, run, epoch):
        if epoch == 1:
            self.curves.append((0, backward_gradients(run.model, self.x, self.y).tolist()))

    def on_epoch_end(self, run, record):
        self.curves.append((record["epoch"],
                            backward_gradients(run.model, self.x, self.y).tolist()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--delay", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--batch", type=int, default=32, help="held-out sequences measured")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results = {"delay": args.delay, "seed": args.seed, "settings": SETTINGS, "methods": {}}
    for name, extra in METHODS.items():
        over = {**SETTINGS, "epochs": args.epochs, "seed": args.seed,
                "task.delay": args.delay, **extra}
        cfg = resolve_config(task="delayed-xor", model="rnn", overrides=over)
        task = get_task("delayed-xor", seed=args.seed, **cfg.task_kwargs)
        items = [task.split("valid")[i] for i in range(args.batch)]
        x = torch.stack([a for a, _ in items], 1)
        y = torch.stack([b for _, b in items], 1)
        probe = GradientProbe(x, y)
        res = train(cfg, args.out / name.replace(" ", "_").replace("+", "p"), force=True,
                    callbacks=[probe])
        results["methods"][name] = {"curves": probe.curves, "test": res["test"],
                                    "flossing_seconds": res.get("flossing_seconds", 0.0),
                                    "wall_time_s": res["wall_time_s"]}
    (args.out / "gradients.json").write_text(json.dumps(results))
    plot(results, args.out / "gradients.png")


def plot(results: dict, path: Path) -> None:
    d = results["delay"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for (name, m), color in zip(results["methods"].items(), ("C0", "C3"), strict=False):
        epochs = [e for e, _ in m["curves"]]
        at_d = [c[d] for _, c in m["curves"]]
        axes[0].semilogy(epochs, at_d, "o-", color=color,
                         label=f"{name} (test acc {m['test']['accuracy']:.2f})")
        for e, c in m["curves"]:
            if e in (0, max(epochs)):
                axes[1].semilogy(np.arange(len(c)), c, color=color,
                                 ls="--" if e == 0 else "-", label=f"{name}, epoch {e}")
    axes[0].set(xlabel="epoch (0: before training, after any flossing before it)",
                ylabel=f"mean ||dL_T / dh_(T-{d})||",
                title=f"gradient reaching {d} steps back (delay {d})")
    axes[1].axvline(d, color="grey", lw=0.8)
    axes[1].set(xlabel="steps back tau", ylabel="mean ||dL_T / dh_(T-tau)||",
                title="gradient against lag")
    axes[0].legend(fontsize=7)
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
