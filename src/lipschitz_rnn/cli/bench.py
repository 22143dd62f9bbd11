"""``lipschitz-rnn bench``: the one front-end of the layer timings (its engine:
``lipschitz_rnn._bench``)."""

from __future__ import annotations

import argparse
import json
import os
import platform

from ._console import console, process_settings


def _device_name(device: str) -> str:
    import torch

    if device == "cuda":
        return torch.cuda.get_device_name()
    try:
        with open("/proc/cpuinfo") as fh:
            model = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor() or platform.machine()
    return f"{model} ({os.cpu_count()} CPUs)"


def _cmd_bench(args: argparse.Namespace) -> int:
    import torch

    from .._bench import BENCH_MODELS, epoch_estimate, format_epoch, format_table, run_bench
    from .._io import write_json
    from ..models.fused import fused_backend, kernel_status

    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: CUDA is not available on this machine")
    if args.repeats < 1:
        raise ValueError(f"--repeats must be >= 1, got {args.repeats}")
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    models = BENCH_MODELS if args.models is None else tuple(m.strip() for m in args.models.split(","))
    if args.plain_process:
        settings = f"plain process (no malloc or denormal settings), torch threads " \
                   f"{torch.get_num_threads()}"
    else:
        settings = process_settings()
    load_start = os.getloadavg() if hasattr(os, "getloadavg") else None
    with console.status("timing ...") as status, fused_backend(args.backend):
        kernels = "torch"
        if args.device == "cpu" and args.backend != "torch":  # "native" raises in run_bench
            status.update("building the native kernels (once) ...")
            backend, detail = kernel_status()
            kernels = f"{backend} [{detail}]"
        rows = run_bench(
            device=args.device,
            grid=args.shape,
            quick=args.quick,
            repeats=args.repeats,
            solver=args.solver,
            models=models,
            memory=not args.no_memory,
            progress=lambda m: status.update(f"timing {m} ..."),
        )
        epoch = (
            epoch_estimate(args.device, repeats=args.repeats, solver=args.solver)
            if args.epoch
            else None
        )
    settings += f", fused kernels: {kernels}"
    load_end = os.getloadavg() if hasattr(os, "getloadavg") else None
    console.print(format_table(rows), markup=False, highlight=False, soft_wrap=True)
    if epoch is not None:
        console.print("\n" + format_epoch(epoch), markup=False, highlight=False, soft_wrap=True)
    machine = f"torch {torch.__version__} on {_device_name(args.device)}, {settings}"
    console.print(
        f"\n{machine}\nload average at start {load_start}, at end {load_end}",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    if args.json:
        write_json(args.json, json.loads(json.dumps({
            "rows": rows, "epoch": epoch, "machine": machine,
            "load_start": load_start, "load_end": load_end,
        }, default=str)))
        console.print(f"wrote {args.json}")
    return 0


def add_commands(sub) -> None:
    s = sub.add_parser("bench", help="time the Lipschitz layer against torch's RNNs")
    s.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    s.add_argument("--quick", action="store_true", help="a smaller grid")
    s.add_argument("--repeats", type=int, default=5)
    s.add_argument(
        "--epoch", action="store_true", help="also extrapolate one sMNIST training epoch"
    )
    s.add_argument(
        "--backend",
        choices=["auto", "native", "torch"],
        default="auto",
        help="kernels of the fused Lipschitz path on CPU (default: native where it builds)",
    )
    s.add_argument("--solver", default="euler", choices=["euler", "rk2", "heun"])
    s.add_argument(
        "--no-memory",
        action="store_true",
        help="skip the CPU peak-memory column (one fresh process per row)",
    )
    s.add_argument(
        "--models",
        default=None,
        help="comma-separated rows (default: lipschitz-fused,lipschitz-loop,nn.RNN,nn.LSTM; "
        "also lipschitz-fused-torch: the fused path on its PyTorch kernels)",
    )
    s.add_argument(
        "--shape", type=int, nargs=3, action="append", metavar=("T", "B", "H"),
        help="a (T, B, H) to time instead of the grid (repeatable)",
    )
    s.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    s.add_argument(
        "--plain-process",
        action="store_true",
        help="leave the process as a user's script has it (no malloc reuse, no flush-to-zero)",
    )
    s.add_argument("--json", default=None, metavar="FILE", help="also write the rows as JSON")
    s.set_defaults(func=_cmd_bench)
