"""Analyses of run directories: Lyapunov spectrum, Hessian spectrum, robustness, comparison.

(The analyses themselves, for any module, are in :mod:`lipschitz_rnn.analysis`; this module
loads a run's best checkpoint and data through :class:`~lipschitz_rnn.runs.rundir.RunDir`, runs
them, and writes the results into the run.)

Each writes its JSON (and a PNG) into the run directory, atomically, and returns the dict.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from .._io import atomic_write_text
from ..analysis import (
    compare_table,
    hessian_spectrum,
    input_noise_curve,
    lyapunov_spectrum,
    plot_curves,
    plot_density,
    plot_evolution,
    plot_spectrum,
    weight_noise_curve,
)
from .rundir import RunDir, run_metric
from .tasks import analysis_batches, loss_function, metric_function

__all__ = [
    "lyapunov_run",
    "lyapunov_evolution",
    "hessian_run",
    "robustness_run",
    "compare_runs",
    "DEFAULT_INPUT_SIGMAS",
    "DEFAULT_WEIGHT_SIGMAS",
]

DEFAULT_INPUT_SIGMAS = (0.0, 0.01, 0.05, 0.1, 0.2, 0.5)
DEFAULT_WEIGHT_SIGMAS = (0.0, 0.001, 0.005, 0.01, 0.05, 0.1)


def _trained_run(run_dir) -> RunDir:
    """The run directory ``run_dir``, which must have a best checkpoint."""
    run = RunDir(run_dir).require()
    if not run.checkpoint_path("best").is_file():
        raise FileNotFoundError(
            f"run_dir: {run.path} has no checkpoints/best.pt (did it finish an epoch?)"
        )
    return run


def lyapunov_run(
    run_dir,
    *,
    batch: int = 16,
    steps: int | None = None,
    k: int | None = None,
    warmup: int = 0,
    data_dir=None,
) -> dict[str, Any]:
    """Spectrum of the best checkpoint driven by the task's test inputs; writes lyapunov.json/png."""
    run = _trained_run(run_dir)
    _, runner, model = run.load(data_dir=data_dir)
    inputs = runner.sample_inputs("test", batch)
    if steps is not None:
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        inputs = inputs[: warmup + steps]
    spec = lyapunov_spectrum(model, inputs, k=k, warmup=warmup)
    d = spec.to_dict()
    summary = {
        "max_exponent": spec.max_exponent,
        "num_positive": int((spec.mean > 0).sum()),
        "kaplan_yorke_dimension": spec.kaplan_yorke_dimension_of_mean,
        "entropy_rate": spec.entropy_rate_of_mean,
    }
    d["summary"] = summary
    run.write_analysis("lyapunov", d)
    plot_spectrum(spec, run.file("lyapunov.png"), title=f"Lyapunov spectrum: {run.name}")
    return d


def lyapunov_evolution(run_dir) -> Path:
    """Plot the spectra logged by ``train --lyapunov-every`` to lyapunov_evolution.png."""
    run = RunDir(run_dir)
    path = run.file("metrics.jsonl")
    if not path.is_file():
        raise FileNotFoundError(f"run_dir: {run.path} has no metrics.jsonl")
    records = [(rec["epoch"], rec["lyapunov"]["spectrum"]) for rec in run.records()
               if "lyapunov" in rec]
    if not records:
        raise ValueError(f"{path} holds no spectra: train with --lyapunov-every E")
    out = run.file("lyapunov_evolution.png")
    plot_evolution(records, out, title=f"Lyapunov spectrum during training: {run.name}")
    return out


def hessian_run(
    run_dir,
    *,
    n_batches: int = 2,
    batch_size: int = 64,
    top_k: int = 1,
    density: bool = True,
    seed: int = 0,
    data_dir=None,
    **kw,
) -> dict[str, Any]:
    """Hessian spectrum of the test loss at the best checkpoint; writes hessian.json/png."""
    run = _trained_run(run_dir)
    _, runner, model = run.load(data_dir=data_dir)
    batches = analysis_batches(runner, "test", n_batches, batch_size)
    spec = hessian_spectrum(
        model, loss_function(runner), batches, top_k=top_k, density=density, seed=seed, **kw
    )
    d = spec.to_dict()
    d["batches"] = {"split": "test", "n_batches": len(batches), "batch_size": batch_size,
                    **_subset(runner, batches)}
    run.write_analysis("hessian", d)
    if density and spec.density is not None:
        plot_density(spec, run.file("hessian.png"))
    return d


def robustness_run(
    run_dir,
    *,
    input_sigmas=DEFAULT_INPUT_SIGMAS,
    weight_sigmas=DEFAULT_WEIGHT_SIGMAS,
    seeds=(0, 1, 2),
    n_batches: int = 4,
    batch_size: int = 256,
    data_dir=None,
) -> dict[str, Any]:
    """Test metric under input and relative weight noise; writes robustness.json/png."""
    run = _trained_run(run_dir)
    _, runner, model = run.load(data_dir=data_dir)
    batches = analysis_batches(runner, "test", n_batches, batch_size)
    metric = metric_function(runner)
    curves = []
    if not runner.is_lm:  # token inputs cannot take Gaussian noise
        curves.append(
            input_noise_curve(
                model, batches, metric, list(input_sigmas), seeds=seeds, label=run.name
            )
        )
    curves.append(
        weight_noise_curve(model, batches, metric, list(weight_sigmas), seeds=seeds, label=run.name)
    )
    d = {
        "metric": runner.metric_name,
        "n_examples_batches": len(batches),
        "subset": _subset(runner, batches),
        "curves": {c.kind: c.to_dict() for c in curves},
    }
    run.write_analysis("robustness", d)
    plot_curves(curves, run.file("robustness.png"))
    return d


def _subset(runner, batches) -> dict[str, int]:
    """How much of the test split the analysis saw (sequences; tokens for language models)."""
    if runner.is_lm:
        used = sum(int(y.numel()) for _, y in batches)
        return {"tokens_used": used, "tokens_total": int(runner.task.test.numel()) - 1}
    used = sum(int(x.shape[1]) for x, _ in batches)
    return {"sequences_used": used, "sequences_total": len(runner.task.test)}


def _noise_map(curve: dict | None) -> dict:
    if not curve:
        return {}
    return {
        float(s): (m, sd)
        for s, m, sd in zip(curve["sigmas"], curve["mean"], curve["std"], strict=True)
    }


def compare_runs(run_dirs, out: str | Path | None = None) -> tuple[str, str]:
    """A Table-3-style table of several runs (reads results/hessian/robustness JSON).

    Writes ``compare.md`` and ``compare.csv`` into ``out`` when given. Returns (markdown, csv).
    """
    if not run_dirs:
        raise ValueError("run_dirs is empty: give at least one run directory")
    rows = []
    results = []
    for rd in run_dirs:
        run = RunDir(rd)
        results.append((run, run.results()))  # verified against its checksum
    tasks = sorted({res.get("task", "?") for _, res in results})
    if len(tasks) > 1:
        warnings.warn(
            f"compare: the runs are of different tasks {tasks}; their metrics are not comparable "
            "(each row names its task)",
            UserWarning,
            stacklevel=2,
        )
    for run, res in results:
        metric_name = run_metric(res, [])
        value = res["test"][metric_name]
        label = res["model"] if run.name == res["model"] else f"{res['model']} ({run.name})"
        if len(tasks) > 1:
            label += f" [{res.get('task', '?')}]"
        row: dict[str, Any] = {
            "model": label,
            "metric_name": metric_name,
            "metric": value,
        }
        h = run.analysis("hessian")
        if h is not None:
            row.update(
                lambda_max=h["eigenvalues"][0] if h.get("eigenvalues") else None,
                trace=h.get("trace"),
                condition_number=h.get("condition_number"),
            )
        robustness = run.analysis("robustness")
        if robustness is not None:
            r = robustness["curves"]
            row["input_noise"] = _noise_map(r.get("input"))
            row["weight_noise"] = _noise_map(r.get("weight"))
        rows.append(row)
    md, csv_text = compare_table(rows)
    if out is not None:
        o = Path(out)
        atomic_write_text(o / "compare.md", md)
        atomic_write_text(o / "compare.csv", csv_text)
    return md, csv_text
