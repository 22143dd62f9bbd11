"""One run directory in the report: what it holds, read without its data set, and its sections
(configuration, learning curves, stability certificate, Lyapunov, Hessian, robustness)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..analysis.plots import exponent_label
from ..models import LipschitzRNNCell
from ..runs.rundir import RunDir, run_metric
from ..runs.tasks import higher_is_better
from ..stability import certify_cell
from . import figures
from ._html import details, esc, figure, fmt, note, table

__all__ = ["RunData", "read_run", "run_section"]

#: what reading a file of a run may raise (missing, unreadable, damaged, not TOML or JSON)
_READ_ERRORS = (OSError, ValueError)


@dataclass
class RunData:
    """What the report reads from a run directory (missing files leave their field empty;
    files that cannot be read are noted in ``problems``)."""

    path: Path
    name: str
    config: dict[str, Any] = field(default_factory=dict)
    records: list[dict] = field(default_factory=list)
    results: dict | None = None
    resumes: list[dict] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def dir(self) -> RunDir:
        return RunDir(self.path)

    @property
    def metric(self) -> str:
        return run_metric(self.results, self.records)

    @property
    def higher_is_better(self) -> bool:
        return higher_is_better(self.metric)

    def analysis(self, name: str) -> dict | None:
        """The output of analysis ``name`` (``lyapunov``, ``hessian``, ``robustness``), None
        when absent or unreadable (noted)."""
        try:
            return self.dir.analysis(name)
        except _READ_ERRORS as e:
            self.problems.append(f"{name}.json could not be read ({e})")
            return None


def read_run(path: Path) -> RunData:
    """Everything the report shows of the run directory ``path``, read through its
    :class:`~lipschitz_rnn.runs.rundir.RunDir`."""
    rd = RunDir(path)
    run = RunData(path=path, name=rd.name)
    try:
        run.config = rd.config_table()
    except _READ_ERRORS as e:
        run.problems.append(f"config.toml could not be read ({e})")
    for what, read in (("records", rd.records), ("resumes", rd.resumes)):
        try:
            setattr(run, what, read(run.problems))
        except _READ_ERRORS as e:
            name = "metrics.jsonl" if what == "records" else "resumes.jsonl"
            run.problems.append(f"{name} could not be read ({e})")
    if rd.has_results():
        try:
            run.results = rd.results()
        except _READ_ERRORS as e:
            run.problems.append(f"results.json could not be read ({e})")
    return run


def flat_config(config: dict[str, Any]) -> dict[str, Any]:
    """The configuration with ``model_kwargs``/``task_kwargs`` as ``model.x``/``task.x``."""
    out: dict[str, Any] = {}
    for k, v in config.items():
        if isinstance(v, dict):
            prefix = {"model_kwargs": "model", "task_kwargs": "task"}.get(k, k)
            out.update({f"{prefix}.{kk}": vv for kk, vv in v.items()})
        else:
            out[k] = v
    return out


# --- sections -----------------------------------------------------------------------------------
def _part(key: str, title: str, body: str) -> str:
    return f'<section class="part" data-part="{key}"><h3>{esc(title)}</h3>{body}</section>'


def _config_part(run: RunData) -> str:
    c, res = run.config, run.results or {}
    mk = c.get("model_kwargs") or {}
    rows = [
        ("task", c.get("task")), ("model", c.get("model")),
        ("hidden size × layers", f"{c.get('hidden_size')} × {c.get('num_layers', 1)}"),
    ]
    if "solver" in mk or "eps" in mk:
        rows.append(("solver, ε", f"{mk.get('solver', 'default')}, {fmt(mk.get('eps', 'default'))}"))
    rows += [
        ("optimizer, lr", f"{c.get('optimizer')}, {fmt(c.get('lr'))}"),
        ("batch size", c.get("batch_size")), ("seed", c.get("seed")),
        ("epochs done / configured", f"{len(run.records)} / {c.get('epochs')}"),
    ]
    if res:
        test = res.get("test") or {}
        best = res.get("best_valid") or {}
        rows += [
            (f"test {run.metric}", test.get(run.metric)), ("test loss", test.get("loss")),
            (f"best valid {run.metric} (epoch)", f"{fmt(best.get(run.metric))} "
                                                f"(epoch {best.get('epoch')})"),
            ("parameters", res.get("num_parameters")),
            ("training time (s)", res.get("wall_time_s")), ("device", res.get("device")),
        ]
    else:
        rows.append(("results", "no results.json: the run has not finished"))
    body = (f"<p>{esc(c.get('description', ''))}</p>" if c.get("description") else "")
    body += table(["setting", "value"], rows, cls="summary")
    flat = flat_config(c)
    body += details(f"full configuration ({len(flat)} keys, config.toml)",
                    table(["key", "value"], sorted(flat.items())))
    if run.dir.file("tb").is_dir():
        body += (f"<p>TensorBoard events of this run: <code>tensorboard --logdir "
                 f"{esc(run.path)}</code></p>")
    if run.resumes:
        body += details(f"resumed {len(run.resumes)} time(s) with changes (resumes.jsonl)", table(
            ["time", "epoch", "step", "changed"],
            [(r.get("time"), r.get("epoch"), r.get("step"), json.dumps(r.get("changed")))
             for r in run.resumes]))
    return _part("config", "Configuration", body)


_EPOCH_COLUMNS = ("epoch", "lr", "train_loss", "train_{m}", "valid_loss", "valid_{m}",
                  "test_loss", "test_{m}", "seconds")


def _curves_part(run: RunData) -> str:
    if not run.records:
        return _part("curves", "Learning curves",
                     note("No epoch has finished yet (metrics.jsonl is missing or empty)."))
    m = run.metric
    cols = [c.format(m=m) for c in _EPOCH_COLUMNS]
    cols = [c for c in cols if any(c in r for r in run.records)]
    body = figure(figures.learning_curves(run.records, m),
                  f"loss and {m} per epoch (train, valid{', test' if 'test_' + m in cols else ''})")
    body += details("numbers per epoch (metrics.jsonl)",
                    table(cols, [[r.get(c) for c in cols] for r in run.records], sortable=True))
    return _part("curves", "Learning curves", body)


def trained_cells(run: RunData) -> list[LipschitzRNNCell]:
    """The Lipschitz cells of the run's best checkpoint, rebuilt without the data set
    (:meth:`~lipschitz_rnn.runs.rundir.RunDir.layer`)."""
    return [m for m in run.dir.layer("best").modules() if isinstance(m, LipschitzRNNCell)]


_CERT_ROWS = (
    ("spectral abscissa of A (max Re λ)", "A_spectral_abscissa"),
    ("eig(A_sym) max (< 0: negative definite)", "A_sym_eig_max"),
    ("eig(A_sym) min", "A_sym_eig_min"),
    ("σ(W) min / max", None),
    ("Theorem 1 (a) σ_min(A_sym) > σ_max(W)", "condition_a"),
    ("Theorem 1 (b)", "condition_b"),
    ("globally exponentially stable (a or b)", "globally_stable"),
    ("largest stable step ε", "max_stable_eps"),
    ("stable-step margin (largest ε − ε)", None),
    ("ε inside the stability region", "eps_stable"),
)
_MAX_CELL_FIGURES = 4


def _certificate_part(run: RunData) -> str:
    title = "Stability certificate"
    model = run.config.get("model")
    if model != "lipschitz":
        return _part("certificate", title, note(
            f"The certificate is of Lipschitz cells; this run's model is {model!r}."))
    if not run.dir.checkpoint_path("best").is_file():
        return _part("certificate", title, note(
            "No checkpoints/best.pt (no epoch has finished): no trained cells to certify."))
    try:
        cells = trained_cells(run)
    except (ValueError, TypeError, RuntimeError, KeyError, OSError) as e:
        return _part("certificate", title, note(f"The trained cells could not be rebuilt: {e}"))
    certs = [certify_cell(c) for c in cells]
    head = ["", *[f"cell {i}" for i in range(len(cells))]]
    rows = []
    for label, key in _CERT_ROWS:
        if key is not None:
            rows.append([label, *[getattr(c, key) for c in certs]])
        elif label.startswith("σ"):
            rows.append([label, *[f"{c.W_sigma_min:.4g} / {c.W_sigma_max:.4g}" for c in certs]])
        else:
            rows.append([label, *[c.max_stable_eps - c.eps for c in certs]])
    cert0 = certs[0]
    body = (f"<p>Best checkpoint; solver <code>{esc(cert0.solver)}</code>, ε = {fmt(cert0.eps)}. "
            "Shaded: the eigenvalues λ for which one step of the solver is stable on "
            "dh/dt = λh, i.e. |R(ελ)| ≤ 1 with R the solver's stability polynomial.</p>")
    body += table(head, rows)
    for i, (cell, cert) in enumerate(zip(cells[:_MAX_CELL_FIGURES], certs, strict=False)):
        with torch.no_grad():
            ea = torch.linalg.eigvals(cell.A.detach().double()).numpy()
            ew = torch.linalg.eigvals(cell.W.detach().double()).numpy()
        body += figure(
            figures.eigenvalue_plane(ea, ew, cert.solver, cert.eps,
                                     title=f"cell {i}: {cert.solver}, ε = {cert.eps:g}"),
            f"cell {i}: eigenvalues of A (circles) and W (crosses) over the stability region")
    if len(cells) > _MAX_CELL_FIGURES:
        body += note(f"Eigenvalue plots of the first {_MAX_CELL_FIGURES} of {len(cells)} cells.")
    return _part("certificate", title, body)


def _lyapunov_part(run: RunData) -> str:
    body = ""
    d = run.analysis("lyapunov")
    if d is not None:
        s = d.get("summary") or {}
        body += table(["quantity", "value"], [
            (exponent_label(d.get("dt"), "largest exponent"), s.get("max_exponent")),
            ("positive exponents", s.get("num_positive")),
            ("Kaplan-Yorke dimension", s.get("kaplan_yorke_dimension",
                                              d.get("kaplan_yorke_dimension_of_mean"))),
            ("entropy rate (Σ λ⁺)", s.get("entropy_rate", d.get("entropy_rate_of_mean"))),
            ("exponents × sequences", f"{d.get('k')} × {d.get('batch_size')}"),
            ("steps (warm-up)", f"{d.get('steps')} ({d.get('warmup')})"),
            ("method", d.get("method")),
        ])
        if d.get("mean"):
            body += figure(figures.lyapunov_spectrum(d),
                           "spectrum of the best checkpoint on test inputs (lyapunov.json) and "
                           "the convergence of its running estimates")
    else:
        body += note("No Lyapunov spectrum of the trained network (lyapunov.json): "
                     f"lipschitz-rnn lyapunov {run.path}")
    logged = [(r["epoch"], r["lyapunov"]["spectrum"]) for r in run.records
              if isinstance(r.get("lyapunov"), dict) and r["lyapunov"].get("spectrum")
              and "epoch" in r]
    if logged:
        body += figure(figures.lyapunov_evolution(logged),
                       f"spectra logged during training at {len(logged)} epoch(s) "
                       "(metrics.jsonl, --lyapunov-every)")
        body += details("Lyapunov summaries per epoch", table(
            ["epoch", *[exponent_label(1.0, k) for k in ("max", "mean", "median")],
             "Kaplan-Yorke dimension"],
            [[r["epoch"], *[r["lyapunov"].get(k) for k in
                            ("max", "mean", "median", "kaplan_yorke_dimension")]]
             for r in run.records if isinstance(r.get("lyapunov"), dict)]))
    else:
        body += note("No spectra logged during training (train --lyapunov-every E).")
    return _part("lyapunov", "Lyapunov spectrum", body)


def _hessian_part(run: RunData) -> str:
    d = run.analysis("hessian")
    if d is None:
        return _part("hessian", "Hessian spectrum", note(
            f"No Hessian analysis (hessian.json): lipschitz-rnn hessian {run.path}"))
    top = d.get("eigenvalues") or []
    trace = d.get("trace")
    batches = d.get("batches") or {}
    body = table(["quantity", "value"], [
        ("top eigenvalues", top),
        ("smallest eigenvalue", d.get("min_eigenvalue")),
        ("condition number λmax/|λmin|", d.get("condition_number")),
        ("trace (Hutchinson)", f"{fmt(trace)} ± {fmt(d.get('trace_stderr'))}"
         if trace is not None else None),
        ("parameters", d.get("num_parameters")),
        ("loss at the checkpoint", d.get("loss")),
        ("test batches × size", f"{batches.get('n_batches', d.get('num_batches'))} × "
                                f"{batches.get('batch_size', '?')}"),
    ])
    body += figure(figures.hessian_density(d),
                   "Hessian of the test loss: spectral density, top and smallest eigenvalues")
    return _part("hessian", "Hessian spectrum", body)


def _robustness_part(run: RunData) -> str:
    d = run.analysis("robustness")
    curves = (d or {}).get("curves")
    if not isinstance(curves, dict) or not curves:
        return _part("robustness", "Robustness", note(
            f"No robustness analysis (robustness.json): lipschitz-rnn robustness {run.path}"))
    metric = d.get("metric", run.metric)
    body = ""
    for kind, c in curves.items():
        rows = [(s, f"{fmt(m)} ± {fmt(sd)}") for s, m, sd in
                zip(c.get("sigmas", []), c.get("mean", []), c.get("std", []), strict=False)]
        body += f"<h4>{esc(kind)} noise</h4>" + table(["σ", f"{metric} (mean ± std)"], rows)
    body += figure(figures.robustness_curves(curves, metric),
                   f"test {metric} under input and weight noise (mean ± std over seeds)")
    return _part("robustness", "Robustness", body)


def run_section(run: RunData, anchor: str) -> str:
    """The whole section of one run."""
    parts = [_config_part(run), _curves_part(run), _certificate_part(run), _lyapunov_part(run),
             _hessian_part(run), _robustness_part(run)]
    problems = "".join(note(p) for p in run.problems)
    return (f'<section class="run" id="{esc(anchor)}"><h2>Run {esc(run.name)}</h2>'
            f"<p><code>{esc(run.path)}</code></p>{problems}{''.join(parts)}</section>")
