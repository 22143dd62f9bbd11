"""Benchmark the fused Lipschitz layer against the plain loop, nn.RNN and nn.LSTM.

    python benchmarks/bench_lipschitz.py                  # full grid, CPU
    python benchmarks/bench_lipschitz.py --quick          # 3 shapes incl. sMNIST (784, 128, 128)
    python benchmarks/bench_lipschitz.py --device cuda --solver rk2 --epoch --json out.json

See lipschitz_rnn.bench for what the columns mean. The machine's load average is printed with
the results: timings are medians of interleaved rounds, but a busy machine still skews them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

from lipschitz_rnn.bench import (
    MODELS,
    epoch_estimate,
    format_epoch,
    format_table,
    reuse_freed_memory,
    run_bench,
)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--quick", action="store_true", help="3 shapes instead of the 12 of the grid")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--solver", default="euler", choices=["euler", "rk2", "heun"])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--shape", type=int, nargs=3, action="append", metavar=("T", "B", "H"),
                   help="a (T, B, H) to run instead of the grid (repeatable)")
    p.add_argument("--epoch", action="store_true",
                   help="also extrapolate one sMNIST epoch (469 batches, T=784, B=128, H=128)")
    p.add_argument("--json", default=None, help="write the rows to this file")
    p.add_argument("--malloc-reuse", action="store_true",
                   help="glibc mallopt: reuse freed memory instead of fresh pages (see "
                        "lipschitz_rnn.bench.reuse_freed_memory); applies to every model")
    p.add_argument("--flush-denormal", action="store_true",
                   help="torch.set_flush_denormal(True): nn.LSTM's backward at T=784 slows ~7x "
                        "on denormal gradients otherwise")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("CUDA is not available", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    malloc = reuse_freed_memory() if args.malloc_reuse else False
    if args.flush_denormal:
        torch.set_flush_denormal(True)
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    rows = run_bench(args.device, grid=args.shape, repeats=args.repeats, models=args.models,
                     solver=args.solver, quick=args.quick,
                     progress=lambda m: print(f"... {m}", file=sys.stderr, flush=True))
    print(format_table(rows))
    result = {"rows": rows}
    if args.epoch:
        ep = epoch_estimate(args.device, solver=args.solver, repeats=args.repeats)
        print()
        print(format_epoch(ep))
        result["epoch"] = ep
    load_end = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(f"\ntorch {torch.__version__}, threads {torch.get_num_threads()}, malloc reuse {malloc}, "
          f"flush denormal {args.flush_denormal}, "
          f"load average at start {load}, at end {load_end}")
    result.update(load_start=load, load_end=load_end, threads=torch.get_num_threads(),
                  malloc_reuse=malloc, flush_denormal=args.flush_denormal)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
