"""Data-parallel training throughput: 1 process x 2 threads against 2 processes x 1 thread.

Both rows train through the real command at the sequential-MNIST shape (T=784, batch 128,
hidden 128, Lipschitz RNN, Euler, the fused path with its native CPU kernels): ``lipschitz-rnn
train`` for one process, the same under ``torchrun --standalone --nproc-per-node=2`` for two.
The data are the synthetic adding task stretched to 784 steps (2 inputs instead of sMNIST's 1,
which costs the same; no data files needed). Each run trains 2 epochs of ``--steps`` batches and
the row's number is the sequences per second the run itself logs (``metrics.jsonl``) for its
second epoch (the first warms up). Rows alternate for ``--rounds`` rounds; the median per row
and the ratio against the first row are printed (and written as JSON with ``--json``).

``--device cuda --gpus N``: the same with one process on one GPU against N processes on N GPUs
(NCCL).

    python benchmarks/bench_ddp.py --rounds 3 --steps 8
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _config(steps: int, device: str) -> list[str]:
    sets = {
        "task.length": 784, "task.n_train": 128 * steps, "task.n_valid": 128, "task.n_test": 128,
        "hidden_size": 128, "batch_size": 128, "eval_batch_size": 128, "epochs": 2,
        "model.solver": '"euler"', "model.eps": 0.03, "lr": 0.001, "device": f'"{device}"',
    }
    out = ["train", "--task", "adding", "--model", "lipschitz"]
    for k, v in sets.items():
        out += ["--set", f"{k}={v}"]
    return out


def _rows(args) -> list[tuple[str, list[str], dict]]:
    py = [sys.executable]
    run = [*py, "-m", "torch.distributed.run", "--standalone"]
    if args.device == "cuda":
        return [("1 process x 1 GPU", [*py, "-m", "lipschitz_rnn"], {}),
                (f"{args.gpus} processes x 1 GPU",
                 [*run, f"--nproc-per-node={args.gpus}", "-m", "lipschitz_rnn"], {})]
    return [("1 process x 2 threads", [*py, "-m", "lipschitz_rnn"], {"--threads": "2"}),
            ("2 processes x 1 thread", [*run, "--nproc-per-node=2", "-m", "lipschitz_rnn"],
             {"--threads": "1"})]


def _one(cmd: list[str], flags: dict, steps: int, device: str, out: Path) -> float:
    argv = [*cmd, *_config(steps, device), "--out", str(out), "--force"]
    for k, v in flags.items():
        argv += [k, v]
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    proc = subprocess.run(argv, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{proc.stdout}\n{proc.stderr}")
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    return float(last["seq_per_s"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=8, help="batches per epoch")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--gpus", type=int, default=2)
    p.add_argument("--json", default=None, help="also write the numbers to this file")
    args = p.parse_args(argv)
    rows = _rows(args)
    seen: dict[str, list[float]] = {name: [] for name, _, _ in rows}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for name, cmd, flags in rows if r % 2 == 0 else rows[::-1]:
                seen[name].append(_one(cmd, flags, args.steps, args.device, Path(tmp) / "run"))
    base = statistics.median(seen[rows[0][0]])
    print(f"{'row':<26} {'seq/s (median)':>15} {'vs first':>9}  rounds")
    result = {}
    for name, vals in seen.items():
        med = statistics.median(vals)
        result[name] = {"seq_per_s": med, "ratio": med / base, "rounds": vals}
        print(f"{name:<26} {med:>15.1f} {med / base:>9.2f}  " + " ".join(f"{v:.1f}" for v in vals))
    print(f"({time.perf_counter() - t0:.0f} s in all)")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
