"""The Lipschitz layer's forward+backward in a plain user script, against `lipschitz-rnn bench`.

Every row runs in its own child process (as a user's script would: nothing else in the process
shapes its heap), and this script interleaves their rounds (one round of each child in turn; the
first round is a warm-up), so that every ratio compares numbers taken under the same machine load:

* ``plain:*``: processes with no settings at all (glibc's default malloc, denormals kept), as any
  user's training script is. Rows: ``layer`` (LipschitzRNN as users call it), ``layer-fresh``
  (the same with ``fused_buffer_reuse(False)``: every large array freshly allocated, as before
  the layer reused them), ``reference-loop`` (the paper authors' style of loop, written in
  ``bench_core.py``: per step the input projection, the ``A`` and ``W`` products, tanh and the
  update as separate autograd ops).
* ``configured:*``: processes set up as ``lipschitz-rnn bench`` sets itself up
  (``lipschitz_rnn.process.configure_process``: glibc malloc reuse, flush-to-zero). Rows:
  ``bench-row`` (the step of a ``lipschitz-rnn bench`` row: the gradients reset, the forward and
  the backward of the loss below, the same as ``layer``'s) and the same reference loop.

Every step is one forward+backward with the loss ``out[-1].square().sum()``. Reported: medians of
wall seconds and of process CPU seconds (user + system, less sensitive to a shared machine's
other jobs) and the ratios the issue asks for.

Usage: python benchmarks/bench_plain_script.py [--T 784 --batch 128 --hidden 128 --input 1
       --solver euler --rounds 9 --threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import warnings

import torch

from lipschitz_rnn import LipschitzRNN
from lipschitz_rnn.models.fused import fused_buffer_reuse, kernel_status
from lipschitz_rnn.process import configure_process

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_core import naive_loop  # noqa: E402  (the reference loop, defined once)

ROWS = ("plain:layer", "plain:layer-fresh", "plain:reference-loop", "configured:bench-row",
        "configured:reference-loop")


def _step(row: str, a: argparse.Namespace):
    torch.manual_seed(0)
    x = torch.randn(a.T, a.batch, a.input)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        layer = LipschitzRNN(a.input, a.hidden, solver=a.solver)
    loop = naive_loop(layer)

    def reference() -> None:
        for p in layer.parameters():
            p.grad = None
        loop(x)[-1].square().sum().backward()

    def user_step() -> None:  # what a user's script does
        for p in layer.parameters():
            p.grad = None
        out, _ = layer(x)
        out[-1].square().sum().backward()

    def fresh() -> None:
        with fused_buffer_reuse(False):
            user_step()

    steps = {"layer": user_step, "bench-row": user_step, "layer-fresh": fresh,
             "reference-loop": reference}
    return steps[row.split(":")[1]]


def child(row: str, a: argparse.Namespace) -> None:
    settings = "none"
    if row.startswith("configured:"):
        settings = configure_process()
    if a.threads:
        torch.set_num_threads(a.threads)
    kernels = kernel_status()
    step = _step(row, a)
    print(json.dumps({"settings": settings, "threads": torch.get_num_threads(),
                      "kernels": f"{kernels.backend} [{kernels.detail}]"}), flush=True)
    for line in sys.stdin:
        if line.strip() != "round":
            break
        w0, c0 = time.perf_counter(), time.process_time()
        step()
        print(json.dumps([time.perf_counter() - w0, time.process_time() - c0]), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--T", type=int, default=784)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--input", type=int, default=1)
    ap.add_argument("--solver", default="euler", choices=["euler", "rk2", "heun"])
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--child", choices=ROWS, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child(a.child, a)
        return
    argv = [sys.executable, os.path.abspath(__file__), *sys.argv[1:]]
    procs = {
        row: subprocess.Popen([*argv, "--child", row], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
        for row in ROWS
    }
    info = {row: json.loads(p.stdout.readline()) for row, p in procs.items()}
    wall: dict[str, list[float]] = {row: [] for row in ROWS}
    cpu: dict[str, list[float]] = {row: [] for row in ROWS}
    load_start = os.getloadavg()
    for r in range(a.rounds + 1):
        for row, p in procs.items():
            p.stdin.write("round\n")
            p.stdin.flush()
            w, c = json.loads(p.stdout.readline())
            if r > 0:
                wall[row].append(w)
                cpu[row].append(c)
    for p in procs.values():
        p.stdin.close()
        p.wait()
    load_end = os.getloadavg()
    med_w = {k: statistics.median(v) for k, v in wall.items()}
    med_c = {k: statistics.median(v) for k, v in cpu.items()}
    print(f"T={a.T} batch={a.batch} hidden={a.hidden} input={a.input} solver={a.solver} "
          f"rounds={a.rounds} (+1 warm-up), torch {torch.__version__}")
    for kind in ("plain:layer", "configured:bench-row"):
        d = info[kind]
        print(f"  {kind.split(':')[0]}: settings {d['settings']}; threads {d['threads']}; "
              f"kernels {d['kernels']}")
    print(f"  load average {load_start} at start, {load_end} at end")
    print(f"\n{'row':<28}{'wall s':>9}{'cpu s':>9}")
    for k in wall:
        print(f"{k:<28}{med_w[k]:>9.4f}{med_c[k]:>9.4f}")
    ratios = [
        ("plain layer / plain reference loop (target <= 0.5)", "plain:layer",
         "plain:reference-loop"),
        ("plain layer / bench row (target <= 1.2)", "plain:layer", "configured:bench-row"),
        ("plain layer, fresh arrays / bench row", "plain:layer-fresh", "configured:bench-row"),
        ("plain layer / plain layer, fresh arrays", "plain:layer", "plain:layer-fresh"),
        ("bench row / bench-process reference loop", "configured:bench-row",
         "configured:reference-loop"),
    ]
    print(f"\n{'ratio':<52}{'wall':>8}{'cpu':>8}")
    for label, num, den in ratios:
        print(f"{label:<52}{med_w[num] / med_w[den]:>8.2f}{med_c[num] / med_c[den]:>8.2f}")


if __name__ == "__main__":
    main()
