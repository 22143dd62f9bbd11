"""Read the gradient-flossing sweeps (experiments/flossing.sh) into the tables and figures of
docs/flossing.md.

    python experiments/flossing_report.py ~/lrnn-runs/flossing --out docs/flossing
    python experiments/flossing_report.py ~/lrnn-runs/flossing-baselines \
        ~/lrnn-runs/flossing-k --recorded docs/flossing/flossing.json --out docs/flossing

For every delay (one sweep each, ``ROOT/delay<D>/``; several ROOTs, and the trials of an
earlier report's ``flossing.json`` with ``--recorded``, are read together; a trial of a ROOT
replaces a recorded one of the same method, delay and id, so the report can be rerun into the
folder whose ``flossing.json`` it reads) and method (unit,
the settings that differ from the main experiment's, flossing phases): the trials, how many succeeded (held-out test accuracy >= ``--threshold``, default 0.95), the mean
test accuracy, the wall time and the flossing share of it. Writes ``flossing.json``,
``flossing.md`` (the table) and the figures ``success_vs_delay.png`` (the main experiment's
methods), ``baselines_vs_delay.png`` (the tuned baselines of experiments/flossing_baselines.sh,
when there are any, beside the untuned units and the flossed RNN),
``spectrum_before_after.png`` (the first exponents on the flossing monitor batch before and
after the flossing phases of one trial per flossed method) and, when
``experiments/flossing_gradients.py`` was run into ``--gradients``, its figure is left where it
is and linked.
"""

from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from lipschitz_rnn.runs.sweepdir import SweepDir  # noqa: E402

ORDER = ["rnn", "rnn + flossing before", "rnn + flossing before and during", "lstm", "gru",
         "lipschitz", "lipschitz + flossing before and during"]
#: the main experiment's settings (experiments/flossing.sh); a method's name lists what differs
MAIN_LR = 1e-3
MAIN_EPS = 0.03
MAIN_K = 32


def method(config) -> str:
    """The method's name: the unit, the settings that differ from the main experiment's
    (``lstm (forget bias 1, lr 0.003)``) and the flossing phases, with their ``k`` where it
    is not the main experiment's (``rnn + flossing before (k 60)``)."""
    f = config.flossing
    tags = []
    if config.model_kwargs.get("forget_bias") is not None:
        tags.append(f"forget bias {config.model_kwargs['forget_bias']:g}")
    if config.model == "lipschitz" and config.model_kwargs.get("eps", MAIN_EPS) != MAIN_EPS:
        tags.append(f"eps {config.model_kwargs['eps']:g}")
    if config.lr != MAIN_LR:
        tags.append(f"lr {config.lr:g}")
    name = config.model + (f" ({', '.join(tags)})" if tags else "")
    k = f" (k {f.k})" if f.k != MAIN_K else ""
    if f.before and f.every:
        return f"{name} + flossing before and during{k}"
    if f.before:
        return f"{name} + flossing before{k}"
    return name


def collect(root: Path, threshold: float, cells: dict | None = None) -> dict:
    cells = defaultdict(list) if cells is None else cells
    for sweep_path in sorted(root.glob("delay*/")):
        m = re.fullmatch(r"delay(\d+)", sweep_path.name)
        if m is None or not (sweep_path / "sweep.json").is_file():
            continue
        delay = int(m.group(1))
        sweep = SweepDir(sweep_path)
        for tid in sweep.trial_ids():
            run = sweep.trial(tid)
            if not run.has_results():
                continue
            res, cfg = run.results(), run.config()
            records = run.records()
            phases = [r["flossing"] for r in records if "flossing" in r]
            trials = cells[(method(cfg), delay)]
            trials[:] = [t for t in trials if t["trial"] != tid]  # it replaces a recorded one
            trials.append({
                "trial": tid, "seed": cfg.seed, "test_accuracy": res["test"]["accuracy"],
                "success": res["test"]["accuracy"] >= threshold,
                "wall_s": res["wall_time_s"], "flossing_s": res.get("flossing_seconds", 0.0),
                "train_s": sum(r["seconds"] for r in records),
                "phases": phases,
            })
    return cells


def recorded(path: Path, threshold: float) -> dict:
    """The trials of an earlier report's ``flossing.json``, success judged at ``threshold``."""
    cells: dict[tuple[str, int], list[dict]] = defaultdict(list)
    for key, trials in json.loads(path.read_text())["trials"].items():
        name, delay = key.rsplit(" @ ", 1)
        cells[(name, int(delay))] = [{**t, "success": t["test_accuracy"] >= threshold}
                                     for t in trials]
    return cells


def summarise(cells: dict) -> list[dict]:
    rows = []
    for (name, delay), trials in sorted(cells.items(), key=lambda kv: (_rank(kv[0][0]),
                                                                        kv[0][1])):
        acc = [t["test_accuracy"] for t in trials]
        rows.append({"method": name, "delay": delay, "trials": len(trials),
                     "successes": sum(t["success"] for t in trials),
                     "mean_test_accuracy": float(np.mean(acc)),
                     "min_test_accuracy": float(np.min(acc)),
                     "max_test_accuracy": float(np.max(acc)),
                     "mean_wall_s": float(np.mean([t["wall_s"] for t in trials])),
                     "mean_train_s": float(np.mean([t["train_s"] for t in trials])),
                     "mean_flossing_s": float(np.mean([t["flossing_s"] for t in trials]))})
    return rows


def _rank(name: str) -> tuple[int, str]:
    """Sort key: the main experiment's order, then each tuned variant after its unit's."""
    if name in ORDER:
        return ORDER.index(name), ""
    base = name.split(" ", 1)[0]
    return max(i for i, m in enumerate(ORDER) if m.split(" ", 1)[0] == base), name


def table(rows: list[dict], threshold: float) -> str:
    delays = sorted({r["delay"] for r in rows})
    methods = sorted({r["method"] for r in rows}, key=_rank)
    by = {(r["method"], r["delay"]): r for r in rows}
    head = "| method | " + " | ".join(f"delay {d}" for d in delays) + " | wall s (flossing s) |"
    lines = [head, "|---" * (len(delays) + 2) + "|"]
    for m in methods:
        cells = []
        for d in delays:
            r = by.get((m, d))
            cells.append("–" if r is None else
                         f"{r['successes']}/{r['trials']} ({r['mean_test_accuracy']:.3f}; "
                         f"{r['min_test_accuracy']:.3f}-{r['max_test_accuracy']:.3f})")
        walls = [by[(m, d)] for d in delays if (m, d) in by]
        wall = np.mean([r["mean_wall_s"] for r in walls])
        fl = np.mean([r["mean_flossing_s"] for r in walls])
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {wall:.0f} ({fl:.0f}) |")
    return (f"Successes (test accuracy >= {threshold}) out of the seeds run, and the mean test "
            "accuracy with its range over the seeds, per method and delay; the last column is the mean wall time of a trial "
            "and the part of it spent flossing.\n\n" + "\n".join(lines) + "\n")


def plot_success(rows: list[dict], path: Path, methods: list[str], *,
                 dashed: tuple[str, ...] = (), title: str = "success against delay") -> None:
    fig, ax = plt.subplots(figsize=(6.4, 4))
    for i, m in enumerate(methods):
        rs = sorted((r for r in rows if r["method"] == m), key=lambda r: r["delay"])
        d = np.array([r["delay"] for r in rs], dtype=float)
        rate = np.array([r["successes"] / r["trials"] for r in rs])
        ax.plot(d * (1 + 0.012 * (i - len(methods) / 2)), rate, "o--" if m in dashed else "o-",
                label=m, lw=0.9 if m in dashed else 1.5)
    ax.set(xlabel="delay d (steps)", ylabel="success rate (test accuracy >= threshold)",
           title=f"delayed XOR, T = 300: {title}", xscale="log")
    ax.set_ylim(-0.05, 1.05)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_by_unit(rows: list[dict], path: Path, methods: list[str], threshold: float) -> None:
    """One panel per unit: the mean test accuracy of each of its methods against delay, with
    the range over the seeds; the main experiment's settings dashed."""
    units = list(dict.fromkeys(m.split(" ", 1)[0] for m in methods))
    delays = sorted({r["delay"] for r in rows})
    cols = min(2, len(units))
    fig, axes = plt.subplots(-(-len(units) // cols), cols, figsize=(5.2 * cols, 3.6 * 2),
                             sharey=True, squeeze=False)
    for ax in axes.flat[len(units):]:
        ax.set_visible(False)
    for ax, unit in zip(axes.flat, units, strict=False):
        mine = [m for m in methods if m.split(" ", 1)[0] == unit]
        for i, m in enumerate(mine):
            rs = sorted((r for r in rows if r["method"] == m), key=lambda r: r["delay"])
            d = np.array([r["delay"] for r in rs], dtype=float) * (1 + 0.025 * (i - len(mine) / 2))
            mean = np.array([r["mean_test_accuracy"] for r in rs])
            lo = mean - np.array([r["min_test_accuracy"] for r in rs])
            hi = np.array([r["max_test_accuracy"] for r in rs]) - mean
            ax.errorbar(d, mean, yerr=[lo, hi], fmt="s" if "flossing" in m else "o",
                        ls="--" if m in ORDER else "-", ms=4, capsize=2, label=m)
        ax.axhline(threshold, color="grey", lw=0.6, ls=":")
        ax.axhline(0.5, color="grey", lw=0.6)
        ax.set(xscale="log", xlabel="delay d (steps)", title=unit,
               ylabel="test accuracy (mean, range over seeds)")
        ax.set_xticks(delays, [str(d) for d in delays])
        ax.minorticks_off()
        ax.legend(fontsize=7, loc="best")
    fig.suptitle("delayed XOR, T = 300: each unit at the main experiment's settings (dashed) "
                 "and tuned (solid); dotted: success threshold", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_spectra(cells: dict, path: Path, delay: int) -> None:
    flossed = [m for m in ORDER if "flossing" in m]
    fig, axes = plt.subplots(1, len(flossed), figsize=(4 * len(flossed), 3.4), squeeze=False)
    for ax, m in zip(axes[0], flossed, strict=True):
        trials = sorted(cells.get((m, delay), []), key=lambda t: t["seed"])
        if not trials or not trials[0]["phases"]:
            ax.set_title(f"{m}: no trial yet", fontsize=8)
            continue
        phases = trials[0]["phases"]
        first = phases[0]
        ax.plot(first["spectrum_before"], "k--", label="initialisation")
        for i, ph in enumerate(phases):
            ax.plot(ph["spectrum_after"], color=f"C{i}",
                    label=f"after phase {i + 1} ({ph['phase']}, {ph['steps']} steps)")
            if i > 0:
                ax.plot(ph["spectrum_before"], color=f"C{i}", ls=":", lw=0.8)
        ax.axhline(0, color="grey", lw=0.6)
        ax.set(xlabel="exponent index i", ylabel="lambda_i (per step)",
               title=f"{m}\n(delay {delay}, seed {trials[0]['seed']})")
        ax.title.set_fontsize(8)
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("root", type=Path, nargs="+", help="folders of delay<D>/ sweeps")
    ap.add_argument("--recorded", type=Path, help="an earlier report's flossing.json")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--threshold", type=float, default=0.95)
    ap.add_argument("--spectrum-delay", type=int, default=40)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    cells = recorded(args.recorded, args.threshold) if args.recorded else defaultdict(list)
    for root in args.root:
        collect(root, args.threshold, cells)
    rows = summarise(cells)
    (args.out / "flossing.json").write_text(json.dumps(
        {"threshold": args.threshold, "rows": rows,
         "trials": {f"{m} @ {d}": t for (m, d), t in cells.items()}}, indent=1))
    (args.out / "flossing.md").write_text(table(rows, args.threshold))
    names = sorted({r["method"] for r in rows}, key=_rank)
    main_methods = [m for m in names if m in ORDER]
    if main_methods:
        plot_success(rows, args.out / "success_vs_delay.png", main_methods)
    if any(m not in ORDER for m in names):
        plot_by_unit(rows, args.out / "baselines_vs_delay.png", names, args.threshold)
    plot_spectra(cells, args.out / "spectrum_before_after.png", args.spectrum_delay)
    print(table(rows, args.threshold))


if __name__ == "__main__":
    main()
