"""The fair-baseline sections of ``study.md`` and their notes (the ``cv``, ``paired`` and
``ood`` blocks of ``study.json``, computed by :mod:`.study_cv`): compact tables, each with a
sentence saying what it means."""

from __future__ import annotations

from typing import Any

__all__ = ["fair_markdown", "fair_notes"]

_NAMES = {"r2": "R²", "rho": "ρ", "auc": "AUC"}


def _f(x: Any, signed: bool = False) -> str:
    if x is None:
        return "—"
    return f"{x:+.2f}" if signed else f"{x:.2f}"


def _ci(median: Any, ci: Any, signed: bool = False) -> str:
    if median is None:
        return "—"
    lo, hi = ci if ci else (None, None)
    return f"{_f(median, signed)} [{_f(lo, signed)}, {_f(hi, signed)}]"


def _cv_table(s: dict[str, Any]) -> list[str]:
    cv = s["cv"]
    lines = ["## Repeated grouped cross-validation", ""]
    if cv.get("reason"):
        return lines + [f"Not computed: {cv['reason']}.", ""]
    lines += [
        f"{cv['repeats']} random splits of the {s['n_groups']} groups into {cv['folds']} folds; "
        "per feature set and model: the median over splits of the out-of-fold R², Spearman ρ "
        "and AUC (top vs bottom quartile of the final metric, from the same predictions), with "
        "the 2.5–97.5 % range over splits in brackets. A set predicts the final metric the "
        "better, the higher its row; the brackets say how much of that is the luck of one "
        "split.", "",
        "| feature set | model | R² | ρ | AUC |", "|---|---|---|---|---|"]
    for e in cv["entries"]:
        cells = [_ci(e["median"].get(m), e["ci95"].get(m)) for m in ("r2", "rho", "auc")]
        lines.append(f"| {e['feature_set']} | {e['model']} | " + " | ".join(cells) + " |")
    return lines + [""]


def _paired_table(s: dict[str, Any]) -> list[str]:
    pairs = [p for p in s["paired"] if p["reason"] is None]
    if not pairs:
        return []
    lines = [
        "## Paired differences", "",
        "The first set minus the second, split by split on the same splits and with the same "
        "model: median [2.5 %, 97.5 %] over splits, then the share of splits where the first is "
        "better. An interval above 0 (share near 100 %) means the first set wins on almost "
        "every split; one straddling 0 means the data cannot tell them apart.", "",
        "| a − b | model | ΔR² | Δρ | ΔAUC |", "|---|---|---|---|---|"]
    for p in pairs:
        cells = []
        for m in ("r2", "rho", "auc"):
            share = p["frac_positive"].get(m)
            cells.append(_ci(p["median"].get(m), p["ci95"].get(m), signed=True)
                         + ("" if share is None else f" · {share:.0%}"))
        lines.append(f"| {p['a']} − {p['b']} | {p['model']} | " + " | ".join(cells) + " |")
    return lines + [""]


def _louo_table(block: dict[str, Any]) -> list[str]:
    entries = [e for e in block["entries"] if e["reason"] is None]
    if not entries:
        return []
    units = list(dict.fromkeys(e["unit"] for e in entries))
    lines = [
        "## Out of distribution: leave one unit out", "",
        "Fitted on the other units, scored on the held-out unit alone (cells: R² against that "
        "unit's own mean / ρ within it): what a predictor knows about an architecture it has "
        "no data for. A negative R² with a high ρ ranks the unit's trials right but misses "
        "their level.", "",
        "| feature set | model | " + " | ".join(units) + " |",
        "|---|---|" + "---|" * len(units)]
    rows: dict[tuple, dict[str, str]] = {}
    for e in entries:
        rows.setdefault((e["feature_set"], e["model"]), {})[e["unit"]] = (
            f"{_f(e['r2'])} / {_f(e['rho'])}")
    for (fs, model), cells in rows.items():
        lines.append(f"| {fs} | {model} | " + " | ".join(cells.get(u, "—") for u in units)
                     + " |")
    return lines + [""]


def _scored_table(entries: list[dict[str, Any]]) -> list[str]:
    lines = ["| feature set | model | R² | ρ | AUC |", "|---|---|---|---|---|"]
    for e in entries:
        if e["reason"] is None:
            lines.append(f"| {e['feature_set']} | {e['model']} | {_f(e.get('r2'))} | "
                         f"{_f(e.get('rho'))} | {_f(e.get('auc'))} |")
    return lines + [""]


def _range_table(block: dict[str, Any]) -> list[str]:
    if block.get("reason") or not block["entries"]:
        return []
    n_train, n_test = block["entries"][0]["n_train"], block["entries"][0]["n_test"]
    thr = ", ".join(f"{u} ≥ {t:.3g}" for u, t in block["thresholds"].items())
    return [
        "## Out of distribution: leave a range out", "",
        f"Fitted on the {n_train} trials below the {block['quantile']:g} quantile of "
        f"`{block['key']}` within their unit, scored on the {n_test} at or above it ({thr}): "
        "extrapolation to a range of the key the predictor has not seen. R² is taken against "
        "the held-out trials' own mean, so a predictor that misses their level scores far "
        "below 0 even where ρ and AUC show that it ranks them.", "",
        *_scored_table(block["entries"])]


def _transfer_table(block: dict[str, Any]) -> list[str]:
    same = block["r2_comparable"]
    return [
        "## Transfer between sweeps", "",
        f"Fitted on all {block['n_from']} trials of `{block['from']}` "
        f"({block['metric_from']['name']}), scored on this sweep ({block['metric_to']['name']}; "
        f"LE epochs in common: {', '.join(map(str, block['epochs'])) or 'none'}). "
        + ("The metrics are the same, so R² is meaningful; "
           if same else "The metrics differ: only ranks compare (ρ and AUC), R² is not given; ")
        + "a high ρ means the predictor orders this sweep's trials without having seen any.", "",
        *_scored_table(block["entries"])]


def fair_markdown(s: dict[str, Any]) -> list[str]:
    """The lines of the fair-baseline sections of ``study.md``."""
    lines = _cv_table(s) + _paired_table(s)
    ood = s["ood"]
    lines += _louo_table(ood["leave_one_unit_out"]) + _range_table(ood["leave_one_out_range"])
    if "transfer" in ood:
        lines += _transfer_table(ood["transfer"])
    return lines


def _unscored(entries: list[dict[str, Any]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for e in entries:
        if e.get("reason"):
            label = f"{e['feature_set']} ({e['model']})"
            out.setdefault(e["reason"], [])
            if label not in out[e["reason"]]:
                out[e["reason"]].append(label)
    return out


def fair_notes(s: dict[str, Any]) -> list[str]:
    """What the fair-baseline blocks could not compute, and why, in words."""
    notes = ["the learning curve within the first epoch is not recorded by the sweep "
             "(trials.csv holds the validation metric and loss per epoch): there is no feature "
             "set for it; validation@E is the earliest loss"]
    cv, ood = s["cv"], s["ood"]
    if cv.get("reason"):
        notes.append(f"repeated cross-validation not computed: {cv['reason']}")
    for reason, sets in _unscored(cv["entries"]).items():
        notes.append(f"not scored by the repeated cross-validation: {', '.join(sets)}: {reason}")
    for name, block in (("leave one unit out", ood["leave_one_unit_out"]),
                        ("leave a range out", ood["leave_one_out_range"])):
        if block.get("reason"):
            notes.append(f"{name} not computed: {block['reason']}")
    tr = ood.get("transfer")
    if tr is not None:
        if not tr["r2_comparable"]:
            notes.append(f"transfer from {tr['from']}: the metrics differ "
                         f"({tr['metric_from']['name']}, {tr['metric_to']['name']}), so only ρ "
                         "and AUC (ranks) are compared; R² is null")
        for reason, sets in _unscored(tr["entries"]).items():
            notes.append(f"transfer from {tr['from']}: not scored: {', '.join(sets)}: {reason}")
    return notes
