"""Paper-Table-3-style comparison of runs: test metric, Hessian summary and robustness.

:func:`compare_table` is pure (no I/O): it takes one dict per run and returns the table as
Markdown and as CSV text.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["compare_table"]

_NUMERIC = (
    ("lambda_max", "λ_max", "lambda_max"),
    ("trace", "tr(H)", "trace"),
    ("condition_number", "κ", "condition_number"),  # κ = λ_max / |λ_min|
)
_NOISE = (("input_noise", "input"), ("weight_noise", "weight"))


def _num(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise TypeError(f"expected a number, got {value!r}")
    return float(value)


def _mean_std(value: Any) -> tuple[float | None, float | None]:
    """A noise entry is a number, a ``(mean, std)`` pair or a ``{"mean", "std"}`` mapping."""
    if isinstance(value, Mapping):
        return _num(value.get("mean")), _num(value.get("std"))
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"noise entries must be a number or (mean, std), got {value!r}")
        return _num(value[0]), _num(value[1])
    return _num(value), None


def _noise_map(row: Mapping[str, Any], key: str, i: int) -> dict[float, tuple]:
    mapping = row.get(key) or {}
    if not isinstance(mapping, Mapping):
        raise TypeError(f"rows[{i}][{key!r}] must map sigma -> metric, got {type(mapping).__name__}")
    out = {}
    for s, v in mapping.items():
        try:
            sigma = float(s)
        except (TypeError, ValueError):
            raise ValueError(f"rows[{i}][{key!r}] has a non-numeric sigma {s!r}") from None
        out[sigma] = _mean_std(v)
    return out


def _fmt_md(x: float | None) -> str:
    if x is None:
        return "—"
    if math.isinf(x):
        return "∞" if x > 0 else "-∞"
    if math.isnan(x):
        return "nan"
    return f"{x:.4g}"


def _fmt_std(std: float, mean: float) -> str:
    """Two significant digits; round-off-sized spreads (e.g. 1e-16 over identical seeds) as 0."""
    if math.isfinite(std) and abs(std) <= 1e-12 * max(1.0, abs(mean)):
        return "0"
    return f"{std:.2g}" if math.isfinite(std) else _fmt_md(std)


def _fmt_csv(x: float | None) -> str:
    return "" if x is None else repr(float(x))


def _sigma_label(s: float) -> str:
    return f"{s:g}"


def compare_table(rows: Sequence[Mapping[str, Any]]) -> tuple[str, str]:
    """Format runs as a Table-3-style comparison; returns ``(markdown, csv)``.

    Each row is a mapping with keys (all but ``model`` optional; missing values print as ``—``
    in Markdown and as empty cells in CSV):

    * ``model`` (str): the run's name;
    * ``metric_name`` (str, e.g. ``"accuracy"``) and ``metric`` (float): the clean test metric;
    * ``lambda_max``, ``trace``, ``condition_number`` (float): from
      :class:`~lipschitz_rnn.analysis.hessian.HessianSpectrum` (κ = λ_max/|λ_min|);
    * ``input_noise``, ``weight_noise``: mappings ``sigma -> value`` where a value is a number, a
      ``(mean, std)`` pair or ``{"mean": ..., "std": ...}`` (e.g.
      :meth:`~lipschitz_rnn.analysis.robustness.RobustnessCurve.as_mapping`); sigma keys may be
      numbers or numeric strings (as read back from JSON).

    Columns: model, the test metric (headed ``test <name>`` when all rows share one name, else a
    ``metric`` name column plus ``test value``), λ_max, tr(H), κ (= λ_max/|λ_min|), then one column per input-noise σ
    and per weight-noise σ (union over rows, ascending). Markdown shows ``mean ± std``; CSV gives
    machine-readable numbers with separate ``..._std`` columns.

    Raises:
        ValueError: no rows, a row without ``model``, a non-numeric sigma.
    """
    rows = list(rows)
    if not rows:
        raise ValueError("rows is empty: need at least one run")
    parsed = []
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise TypeError(f"rows[{i}] must be a mapping, got {type(row).__name__}")
        if not row.get("model"):
            raise ValueError(f"rows[{i}] has no 'model'")
        parsed.append(
            {
                "model": str(row["model"]),
                "metric_name": row.get("metric_name"),
                "metric": _num(row.get("metric")),
                **{k: _num(row.get(k)) for k, _, _ in _NUMERIC},
                **{k: _noise_map(row, k, i) for k, _ in _NOISE},
            }
        )

    names = {p["metric_name"] for p in parsed}
    shared_name = len(names) == 1
    if not shared_name:
        metric_label = "test value"  # the names go in their own "metric" column
    elif None in names:
        metric_label = "test metric"
    else:
        metric_label = f"test {next(iter(names))}"
    sigmas = {k: sorted({s for p in parsed for s in p[k]}) for k, _ in _NOISE}

    # ---- markdown
    head = ["model"] + ([] if shared_name else ["metric"]) + [metric_label]
    head += [label for _, label, _ in _NUMERIC]
    for key, short in _NOISE:
        head += [f"{short} σ={_sigma_label(s)}" for s in sigmas[key]]
    head = [h.replace("|", "\\|") for h in head]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    for p in parsed:
        cells = [p["model"]] + ([] if shared_name else [str(p["metric_name"] or "—")])
        cells.append(_fmt_md(p["metric"]))
        cells += [_fmt_md(p[k]) for k, _, _ in _NUMERIC]
        for key, _ in _NOISE:
            for s in sigmas[key]:
                mean, std = p[key].get(s, (None, None))
                cell = _fmt_md(mean)
                if mean is not None and std is not None:
                    cell += f" ± {_fmt_std(std, mean)}"
                cells.append(cell)
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    markdown = "\n".join(lines) + "\n"

    # ---- csv
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    chead = ["model", "metric_name", "metric"] + [c for _, _, c in _NUMERIC]
    for key, short in _NOISE:
        for s in sigmas[key]:
            chead += [f"{short}_noise@{_sigma_label(s)}", f"{short}_noise@{_sigma_label(s)}_std"]
    writer.writerow(chead)
    for p in parsed:
        out = [p["model"], "" if p["metric_name"] is None else str(p["metric_name"])]
        out.append(_fmt_csv(p["metric"]))
        out += [_fmt_csv(p[c]) for c, _, _ in _NUMERIC]
        for key, _ in _NOISE:
            for s in sigmas[key]:
                mean, std = p[key].get(s, (None, None))
                out += [_fmt_csv(mean), _fmt_csv(std)]
        writer.writerow(out)
    return markdown, buf.getvalue()
