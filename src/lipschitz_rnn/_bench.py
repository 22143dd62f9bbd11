"""The engine of ``lipschitz-rnn bench`` (private: the command is its interface; scripts that
time their own code are in ``benchmarks/``): speed of the Lipschitz layer's fused path against
the plain per-step loop and torch's RNNs.

:func:`run_bench` times one forward+backward (loss on the last output, as in sequence
classification) of four layers on a grid of shapes, all built with ``input_size`` features:

* ``lipschitz-fused``: :class:`~lipschitz_rnn.models.lipschitz.LipschitzRNN` (the fused scan);
* ``lipschitz-loop``: the same layer with ``use_fused = False`` (the generic per-step autograd
  loop);
* ``nn.RNN``: ``torch.nn.RNN(nonlinearity="tanh")``; ``nn.LSTM``: ``torch.nn.LSTM``.

Timing: all layers of one shape (and a GEMM probe) run round-robin, ``repeats`` rounds after one
warm-up round, and each row reports the median; so every ratio compares numbers taken in the same
run under the same machine load.

Columns of a row (a dict):

* ``seconds``: median seconds of one forward+backward; ``speedup_vs_loop``: the loop's seconds
  divided by this row's (> 1 is faster than the plain loop).
* ``gflop``: analytic FLOPs of forward+backward (multiply-add = 2 FLOPs; element-wise work not
  counted). Lipschitz, per step, with ``G = 2 B H 2H`` (one (B,H)@(H,2H) product): euler forward
  ``G``, backward ``G`` (recurrent adjoint) + ``G`` (its share of the weight-gradient GEMM),
  i.e. ``3 G = 12 B H^2``; rk2/heun twice that. The input projection adds ``6 B I H``. nn.RNN:
  ``6 B H^2 + 6 B I H``; nn.LSTM: ``24 B H^2 + 24 B I H`` (per step). The loop counts the same
  FLOPs as the fused path (same maths).
* ``gflops``: ``gflop / seconds``, the achieved rate.
* ``gemm_gflops``: the rate of ``torch.mm`` at the per-step shape (B, H) @ (H, 2H), measured
  in the same rounds (a loop of T products into a preallocated output, dispatch included); the
  best round is taken (the attainable rate; on a shared machine the median of a 2-thread GEMM
  loop swings with the neighbours' load far more than the layers do), so ``x_bound`` is
  conservative.
* ``gemm_bound_s``: ``gflop / gemm_gflops``, the time if every FLOP ran at that rate with no other
  overhead; ``x_bound``: ``seconds / gemm_bound_s`` (1.0 = at the bound).
* ``saved_mb``: activation memory, MiB of the distinct storages alive after the forward because
  of it: the tensors autograd saved for backward (caught with
  ``torch.autograd.graph.saved_tensors_hooks``) plus the outputs, not counting parameters and
  the input. It is the memory that grows with T (e.g. fused euler: the states and the tanh
  values, 2 T*B*H floats, the projected input being scratch of the fused Function; the plain
  loop: per-step states and tanh outputs plus the stacked output, 3 T*B*H), not the process peak (torch's CPU allocations are invisible to
  tracemalloc and ``ru_maxrss`` is a process-lifetime high-water mark).
* ``peak_mb``: peak memory of one forward+backward above what was held before it (the work
  buffers of the backward included). On CUDA, ``torch.cuda.max_memory_allocated``; on CPU (with
  ``memory=True``), the resident high-water mark of the step in a fresh process
  (:func:`cpu_peak_mb`).

:func:`epoch_estimate` times full training steps (layer + linear readout + cross-entropy + Adam)
and extrapolates one sMNIST epoch (469 batches of 128, T = 784); it is an extrapolation from
per-batch medians, not a measured epoch.
"""

from __future__ import annotations

import gc
import json
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from itertools import product

import torch
from torch import nn

from ._io import write_json
from .models import LipschitzRNN
from .models.fused import fused_backend, kernel_status

__all__ = [
    "FULL_GRID",
    "QUICK_GRID",
    "BENCH_MODELS",
    "EXTRA_BENCH_MODELS",
    "run_bench",
    "epoch_estimate",
    "format_table",
    "format_epoch",
    "cpu_peak_mb",
    "time_interleaved",
]

FULL_GRID: tuple[tuple[int, int, int], ...] = tuple(
    product((100, 784), (32, 128), (64, 128, 256))
)
QUICK_GRID: tuple[tuple[int, int, int], ...] = ((100, 32, 64), (100, 128, 128), (784, 128, 128))
BENCH_MODELS = ("lipschitz-fused", "lipschitz-loop", "nn.RNN", "nn.LSTM")
# also accepted: the fused path pinned to its PyTorch kernels (compare with the native ones)
EXTRA_BENCH_MODELS = ("lipschitz-fused-torch",)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _build(name: str, input_size: int, hidden: int, solver: str, eps: float, device, dtype):
    if name in ("lipschitz-fused", "lipschitz-fused-torch", "lipschitz-loop"):
        with warnings.catch_warnings():  # the stability notice is irrelevant to timing
            warnings.simplefilter("ignore", RuntimeWarning)
            layer = LipschitzRNN(
                input_size, hidden, solver=solver, eps=eps, device=device, dtype=dtype
            )
        layer.use_fused = name != "lipschitz-loop"
        return layer
    if name == "nn.RNN":
        return nn.RNN(input_size, hidden, nonlinearity="tanh", device=device, dtype=dtype)
    if name == "nn.LSTM":
        return nn.LSTM(input_size, hidden, device=device, dtype=dtype)
    raise ValueError(f"unknown model {name!r}; choose from {BENCH_MODELS}")


def _flop(name: str, solver: str, T: int, B: int, H: int, I: int) -> float:
    if name.startswith("lipschitz"):
        stages = 1 if solver == "euler" else 2
        return T * (stages * 12 * B * H * H + 6 * B * I * H)
    if name == "nn.RNN":
        return T * (6 * B * H * H + 6 * B * I * H)
    if name == "nn.LSTM":
        return T * (24 * B * H * H + 24 * B * I * H)
    raise ValueError(name)


def _key(t: torch.Tensor) -> tuple[int, str]:
    st = t.untyped_storage()
    return st.data_ptr(), str(t.device)


def _activation_bytes(layer: nn.Module, x: torch.Tensor) -> int:
    """Bytes of distinct storages alive after the forward because of it: everything autograd
    saved for backward plus the outputs, excluding the parameters and the input."""
    seen: dict[tuple[int, str], int] = {}

    def add(t: torch.Tensor) -> None:
        try:
            seen[_key(t)] = t.untyped_storage().nbytes()
        except (RuntimeError, NotImplementedError):  # pragma: no cover - exotic tensors
            pass

    def pack(t: torch.Tensor):
        add(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out, h_n = layer(x)
    for t in (out, *(h_n if isinstance(h_n, tuple) else (h_n,))):
        add(t)
    for t in (x, *layer.parameters()):
        seen.pop(_key(t), None)
    del out, h_n
    return sum(seen.values())


def _backend_for(model: str) -> str:
    """The fused-kernel backend a bench row runs under (``lipschitz-fused-torch``: PyTorch)."""
    return "torch" if model == "lipschitz-fused-torch" else "auto"


def _fwd_bwd(layer: nn.Module, x: torch.Tensor, backend: str = "auto") -> Callable[[], None]:
    params = [p for p in layer.parameters()]

    def step() -> None:
        for p in params:
            p.grad = None
        with fused_backend(backend):
            out, _ = layer(x)
            out[-1].square().sum().backward()

    return step


def _gemm_probe(T: int, B: int, H: int, device, dtype) -> Callable[[], None]:
    h = torch.randn(B, H, device=device, dtype=dtype) * 0.1
    M = torch.randn(H, 2 * H, device=device, dtype=dtype) * 0.1
    z = torch.empty(B, 2 * H, device=device, dtype=dtype)

    def probe() -> None:
        for _ in range(T):
            torch.mm(h, M, out=z)

    return probe


def _timed(fn: Callable[[], None], device: torch.device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def run_bench(
    device: str | torch.device = "cpu",
    grid: Iterable[Sequence[int]] | None = None,
    repeats: int = 5,
    *,
    models: Sequence[str] = BENCH_MODELS,
    solver: str = "euler",
    eps: float = 0.03,
    input_size: int = 1,
    dtype: torch.dtype = torch.float32,
    quick: bool = False,
    seed: int = 0,
    memory: bool = False,
    progress: Callable[[str], None] | None = None,
) -> list[dict]:
    """Time forward+backward of ``models`` on ``grid``; one dict per (shape, model).

    Args:
        device: ``"cpu"`` or ``"cuda"`` (any torch device).
        grid: (T, B, H) triples; default :data:`FULL_GRID` (T in {100, 784}, B in {32, 128},
            H in {64, 128, 256}), or :data:`QUICK_GRID` with ``quick=True``.
        repeats: timed rounds per shape (median reported), after one warm-up round.
        models: names from :data:`BENCH_MODELS` and :data:`EXTRA_BENCH_MODELS`.
            ``speedup_vs_loop`` needs ``"lipschitz-loop"``.
        solver, eps: of the Lipschitz layers.
        input_size: features per step (1 as in sequential MNIST).
        memory: also measure ``peak_mb`` on CPU (one fresh process per row, after the timing).
        progress: called with a short message before each shape (e.g. a CLI status line).

    Returns the rows described in the module docstring.
    """
    device = torch.device(device)
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    shapes = [tuple(int(v) for v in s) for s in (grid or (QUICK_GRID if quick else FULL_GRID))]
    known = BENCH_MODELS + EXTRA_BENCH_MODELS
    for name in models:
        if name not in known:
            raise ValueError(f"unknown model {name!r}; choose from {known}")
    rows: list[dict] = []
    for T, B, H in shapes:
        if progress is not None:
            progress(f"T={T} B={B} H={H}")
        torch.manual_seed(seed)
        x = torch.randn(T, B, input_size, device=device, dtype=dtype)
        layers = {n: _build(n, input_size, H, solver, eps, device, dtype) for n in models}
        steps = {n: _fwd_bwd(layer, x, _backend_for(n)) for n, layer in layers.items()}
        steps[_GEMM] = _gemm_probe(T, B, H, device, dtype)
        times = time_interleaved(steps, repeats, device)
        gemm_times = times.pop(_GEMM)
        gemm_rate = 2.0 * B * H * 2 * H * T / min(gemm_times) / 1e9  # best round: attainable
        loop_s = statistics.median(times["lipschitz-loop"]) if "lipschitz-loop" in times else None
        for n in models:
            sec = statistics.median(times[n])
            gflop = _flop(n, solver, T, B, H, input_size) / 1e9
            saved = _activation_bytes(layers[n], x)
            row = {
                **_row_head(n, solver, device, T, B, H),
                "seconds": sec,
                "seconds_min": min(times[n]),
                "speedup_vs_loop": (loop_s / sec) if loop_s else None,
                "gflop": gflop,
                "gflops": gflop / sec,
                "gemm_gflops": gemm_rate,
                "gemm_bound_s": gflop / gemm_rate,
                "x_bound": sec / (gflop / gemm_rate),
                "saved_mb": saved / 2**20,
                "threads": torch.get_num_threads(),
                "repeats": repeats,
            }
            if device.type == "cuda":
                row["peak_mb"] = _cuda_peak_mb(steps[n], device)
            rows.append(row)
        del layers, steps
    if memory and device.type == "cpu":
        for row in rows:
            if progress is not None:
                progress(f"peak memory {row['model']} T={row['T']} B={row['B']} H={row['H']}")
            spec = {
                "model": row["model"], "T": row["T"], "B": row["B"], "H": row["H"],
                "solver": solver, "eps": eps, "input_size": input_size,
                "dtype": str(dtype).removeprefix("torch."), "seed": seed,
                "threads": torch.get_num_threads(),
            }
            row["peak_mb"] = cpu_peak_mb(spec)
    return rows


def cpu_peak_mb(spec: dict) -> float | None:
    """Peak resident memory (MiB) of one forward+backward of ``spec["model"]``, measured in a
    fresh Python process: the kernel's resident high-water mark (``VmHWM``, reset through
    ``/proc/self/clear_refs``) during the step, minus the resident size just before it (layer,
    input and everything imported already in place; a warm-up step of the native kernels' build
    runs first and is freed). None where Linux's ``/proc`` interface is unavailable."""
    with tempfile.TemporaryDirectory() as tmp:
        out = f"{tmp}/peak.json"
        code = "import sys; from lipschitz_rnn._bench import _peak_child; _peak_child(*sys.argv[1:])"
        proc = subprocess.run(
            [sys.executable, "-c", code, json.dumps(spec), out], capture_output=True, text=True
        )
        if proc.returncode != 0:
            raise RuntimeError(f"peak-memory child failed: {proc.stderr.strip()[-2000:]}")
        with open(out) as fh:
            return json.load(fh)["peak_mb"]


def _proc_status_kb(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _peak_child(spec_json: str, out_path: str) -> None:
    """Entry point of :func:`cpu_peak_mb`'s child process; writes ``{"peak_mb": ...}``."""
    spec = json.loads(spec_json)
    torch.set_num_threads(spec["threads"])
    torch.manual_seed(spec["seed"])
    dtype = getattr(torch, spec["dtype"])
    model = spec["model"]
    x = torch.randn(spec["T"], spec["B"], spec["input_size"], dtype=dtype)
    layer = _build(model, spec["input_size"], spec["H"], spec["solver"], spec["eps"], "cpu", dtype)
    step = _fwd_bwd(layer, x, _backend_for(model))
    if model == "lipschitz-fused":
        kernel_status()  # build/load the kernels outside the measurement
    gc.collect()
    peak = None
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # reset the peak resident size (VmHWM) to the current one
        before = _proc_status_kb("VmRSS")
        step()
        peak = (_proc_status_kb("VmHWM") - before) / 1024.0
    except (OSError, KeyError):
        pass
    write_json(out_path, {"peak_mb": peak})


_GEMM = "__gemm_probe__"


def time_interleaved(
    steps: dict[str, Callable[[], None]], repeats: int, device: torch.device
) -> dict[str, list[float]]:
    """Seconds of each step over ``repeats`` round-robin rounds, after one untimed warm-up round:
    every step of a round runs under the same machine load, so ratios between them are fair."""
    times: dict[str, list[float]] = {n: [] for n in steps}
    for r in range(repeats + 1):
        for n, step in steps.items():
            dt = _timed(step, device)
            if r > 0:
                times[n].append(dt)
    return times


def _row_head(name: str, solver: str, device: torch.device, T: int, B: int, H: int) -> dict:
    solver = solver if name.startswith("lipschitz") else ""
    return {"model": name, "solver": solver, "device": str(device), "T": T, "B": B, "H": H}


def _cuda_peak_mb(step: Callable[[], None], device: torch.device) -> float:
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    step()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - base) / 2**20


def epoch_estimate(
    device: str | torch.device = "cpu",
    *,
    T: int = 784,
    B: int = 128,
    H: int = 128,
    batches: int = 469,
    repeats: int = 3,
    solver: str = "euler",
    eps: float = 0.03,
    models: Sequence[str] = ("lipschitz-fused", "lipschitz-loop"),
    seed: int = 0,
) -> list[dict]:
    """Median time of one training step (layer + Linear(H, 10) readout of the last state,
    cross-entropy, backward, Adam step) and ``epoch_s = batches * per_batch_s`` (extrapolated;
    data loading not included). Steps of the models alternate, one warm-up step each."""
    device = torch.device(device)
    torch.manual_seed(seed)
    x = torch.randn(T, B, 1, device=device)
    y = torch.randint(0, 10, (B,), device=device)
    runs = {}
    for n in models:
        layer = _build(n, 1, H, solver, eps, device, torch.float32)
        head = nn.Linear(H, 10, device=device)
        opt = torch.optim.Adam([*layer.parameters(), *head.parameters()], lr=1e-3)

        def train_step(layer=layer, head=head, opt=opt) -> None:
            opt.zero_grad(set_to_none=True)
            out, _ = layer(x)
            nn.functional.cross_entropy(head(out[-1]), y).backward()
            opt.step()

        runs[n] = train_step
    times = time_interleaved(runs, repeats, device)
    rows = []
    for n in models:
        per = statistics.median(times[n])
        rows.append(
            {
                **_row_head(n, solver, device, T, B, H),
                "per_batch_s": per,
                "batches": batches,
                "epoch_s": per * batches,
                "extrapolated": True,
                "threads": torch.get_num_threads(),
            }
        )
    return rows


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def format_table(rows: Sequence[dict]) -> str:
    """Plain-text table of :func:`run_bench` rows."""
    cols = [
        ("model", "model", "s"),
        ("solver", "solver", "s"),
        ("T", "T", "d"),
        ("B", "B", "d"),
        ("H", "H", "d"),
        ("seconds", "s/fwd+bwd", ".4f"),
        ("speedup_vs_loop", "vs loop", ".2f"),
        ("gflops", "GFLOP/s", ".1f"),
        ("gemm_gflops", "GEMM GFLOP/s", ".1f"),
        ("x_bound", "x bound", ".2f"),
        ("saved_mb", "saved MB", ".1f"),
    ]
    if any("peak_mb" in r for r in rows):
        cols.append(("peak_mb", "peak MB", ".1f"))
    cells = [[h for _, h, _ in cols]]
    for r in rows:
        cells.append([_fmt(r.get(k), spec) for k, _, spec in cols])
    widths = [max(len(row[i]) for row in cells) for i in range(len(cols))]
    lines = []
    for j, row in enumerate(cells):
        lines.append(
            "  ".join(
                c.ljust(w) if i < 2 else c.rjust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_epoch(rows: Sequence[dict]) -> str:
    """Plain-text lines for :func:`epoch_estimate` rows."""
    return "\n".join(
        f"{r['model']:<16} {r['solver']:<6} T={r['T']} B={r['B']} H={r['H']}: "
        f"{r['per_batch_s']:.3f} s/batch -> {r['epoch_s']:.0f} s per {r['batches']}-batch epoch "
        "(extrapolated)"
        for r in rows
    )
