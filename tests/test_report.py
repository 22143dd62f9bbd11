"""``lipschitz-rnn report``: the HTML of one run, two runs and a sweep, parsed with the standard
library; every image decoded; nothing loaded from outside; and a real browser (headless
Chromium) renders it without console errors."""

import base64
import csv
import io
import json
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from html.parser import HTMLParser

import matplotlib.image
import numpy as np
import pytest
from matplotlib.figure import Figure

from lipschitz_rnn.cli import main
from lipschitz_rnn.report import build_report, default_report_path, write_report
from lipschitz_rnn.report._html import markdown
from lipschitz_rnn.runs.analyses import hessian_run, lyapunov_run, robustness_run
from lipschitz_rnn.runs.config import TrainConfig
from lipschitz_rnn.runs.rundir import load_run
from lipschitz_rnn.stability import certify
from lipschitz_rnn.train.loop import train

RUN_PARTS = ["config", "curves", "certificate", "lyapunov", "hessian", "robustness"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A Lipschitz run with every analysis and a GRU run with none (tiny digits runs)."""
    root = tmp_path_factory.mktemp("runs")
    for name, model, kw in (("lip", "lipschitz", {"solver": "rk2", "eps": 0.3}),
                            ("gru", "gru", {})):
        cfg = TrainConfig(task="digits", model=model, hidden_size=5, epochs=2, batch_size=32,
                          max_batches=4, lr=0.01, model_kwargs=kw, test_every=1,
                          lyapunov_every=1 if model == "lipschitz" else 0,
                          lyapunov_batch=3).validate()
        train(cfg, root / name)
    lip = root / "lip"
    lyapunov_run(lip, batch=3)
    hessian_run(lip, n_batches=1, batch_size=16, top_k=2, trace_samples=10, density_ncv=16,
                density_points=128)
    robustness_run(lip, input_sigmas=(0.0, 0.5), weight_sigmas=(0.0, 0.1), seeds=(0, 1),
                   n_batches=1, batch_size=32)
    return {"lip": lip, "gru": root / "gru"}


class Page(HTMLParser):
    """What the tests look at: sections (by id and data-part), images, links, scripts, notes,
    tables (as lists of rows of cell texts)."""

    def __init__(self, text):
        super().__init__(convert_charrefs=True)
        self.stack, self.sections, self.images, self.urls = [], [], [], []
        self.scripts, self.notes, self.tables = [], [], []
        self._note = self._cell = None
        self.feed(text)

    VOID = {"img", "meta", "br", "hr", "input", "link", "source", "wbr"}

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag not in self.VOID:
            self.stack.append(tag)
        for key in ("src", "href", "action", "srcset", "poster"):
            if key in a:
                self.urls.append((tag, key, a[key]))
        if tag == "section":
            self.sections.append({"id": a.get("id"), "part": a.get("data-part"),
                                  "class": a.get("class"), "images": 0, "notes": 0,
                                  "tables": 0, "depth": len(self.stack)})
        elif tag == "img":
            self.images.append(a["src"])
            for s in self._open():
                s["images"] += 1
        elif tag == "script":
            self.scripts.append(a)
        elif tag == "p" and a.get("class") == "note":
            self._note = ""
            for s in self._open():
                s["notes"] += 1
        elif tag == "table":
            self.tables.append({"class": a.get("class") or "", "rows": []})
            for s in self._open():
                s["tables"] += 1
        elif tag == "tr":
            self.tables[-1]["rows"].append([])
        elif tag in ("td", "th"):
            self._cell = ""

    def _open(self):
        return [s for s in self.sections if s.get("open", True) and s["depth"] <= len(self.stack)]

    def handle_endtag(self, tag):
        if tag == "section":
            for s in reversed(self.sections):
                if s.get("open", True) and s["depth"] == len(self.stack):
                    s["open"] = False
                    break
        elif tag == "p" and self._note is not None:
            self.notes.append(self._note)
            self._note = None
        elif tag in ("td", "th") and self._cell is not None:
            self.tables[-1]["rows"][-1].append(self._cell.strip())
            self._cell = None
        if self.stack and self.stack[-1] == tag:
            self.stack.pop()

    def handle_data(self, data):
        if self._note is not None:
            self._note += data
        if self._cell is not None:
            self._cell += data

    def parts(self):
        return [s["part"] for s in self.sections if s["part"]]


def check_self_contained(text, images=True):
    """No external URL anywhere; every image decodes; one inline script."""
    page = Page(text)
    for tag, key, url in page.urls:
        assert url.startswith("data:image/") or url.startswith("#"), (tag, key, url[:80])
    outside_images = re.sub(r'"data:image/[^"]*"', '""', text)
    assert "http://" not in outside_images and "https://" not in outside_images
    assert "<link" not in text and "@import" not in text and "url(" not in outside_images
    assert page.scripts == [{}]  # one inline script (table sorting), nothing loaded
    assert bool(page.images) == images
    for uri in page.images:
        head, _, payload = uri.partition(",")
        data = base64.b64decode(payload, validate=True)
        if head == "data:image/svg+xml;base64":
            root = ET.fromstring(data)
            assert root.tag.endswith("svg") and float(root.get("width").rstrip("pt")) > 100
        else:
            assert head == "data:image/png;base64"
            img = matplotlib.image.imread(io.BytesIO(data), format="png")
            assert img.shape[0] > 10 and img.shape[1] > 10
    return page


def test_one_run_has_every_section(runs, tmp_path):
    out = write_report([runs["lip"]], tmp_path / "r.html")
    text = out.read_text()
    assert text.startswith("<!DOCTYPE html>")
    page = check_self_contained(text)
    assert page.parts() == RUN_PARTS
    by_part = {s["part"]: s for s in page.sections if s["part"]}
    for part in RUN_PARTS[1:]:
        assert by_part[part]["images"] >= 1, part
        assert by_part[part]["notes"] == 0, (part, page.notes)
    assert by_part["lyapunov"]["images"] == 2  # analysis + spectra logged during training
    assert not [s for s in page.sections if s["class"] == "comparison"]
    summary = next(t for t in page.tables if "summary" in t["class"])
    rows = dict(r for r in summary["rows"] if len(r) == 2)
    results = json.loads((runs["lip"] / "results.json").read_text())
    assert rows["model"] == "lipschitz" and rows["epochs done / configured"] == "2 / 2"
    assert rows["test accuracy"] == f"{results['test']['accuracy']:.4g}"
    cert = next(t for t in page.tables if t["rows"] and t["rows"][0][1:] == ["cell 0"])
    margin = dict((r[0], r[1]) for r in cert["rows"][1:])["stable-step margin (largest ε − ε)"]
    assert float(margin) == pytest.approx(
        float(dict((r[0], r[1]) for r in cert["rows"][1:])["largest stable step ε"]) - 0.3,
        abs=1e-3)
    # the report of one directory goes into it by default
    assert default_report_path([runs["lip"]]) == runs["lip"] / "report.html"


def test_certificate_matches_stability_module(runs):
    _, _, model = load_run(runs["lip"])
    cert = certify(model)[0]
    page = Page(build_report([runs["lip"]]))
    table = next(t for t in page.tables if t["rows"] and t["rows"][0][1:] == ["cell 0"])
    rows = {r[0]: r[1] for r in table["rows"][1:]}
    assert rows["spectral abscissa of A (max Re λ)"] == f"{cert.A_spectral_abscissa:.4g}"
    assert rows["eig(A_sym) max (< 0: negative definite)"] == f"{cert.A_sym_eig_max:.4g}"


def test_two_runs_side_by_side(runs, tmp_path):
    out = tmp_path / "two.html"
    assert main(["report", str(runs["lip"]), str(runs["gru"]), "--out", str(out)]) == 0
    page = check_self_contained(out.read_text())
    comp = [s for s in page.sections if s["class"] == "comparison"]
    assert len(comp) == 1 and comp[0]["images"] == 1 and comp[0]["tables"] >= 2
    assert page.parts() == RUN_PARTS * 2
    compare = page.tables[0]
    assert compare["rows"][0][:2] == ["model", "test accuracy"]
    assert {r[0] for r in compare["rows"][1:]} == {"lipschitz (lip)", "gru"}
    differ = next(t for t in page.tables if t["rows"][0] == ["key", "lip", "gru"])
    assert ["model", "lipschitz", "gru"] in differ["rows"]
    # the GRU run lacks analyses and a certificate: notes, not errors
    joined = " ".join(page.notes)
    assert "model is 'gru'" in joined and "No Hessian analysis" in joined
    assert "No robustness analysis" in joined


@pytest.fixture(scope="module")
def sweep(runs, tmp_path_factory):
    """A sweep directory as ``lipschitz-rnn sweep`` and ``study`` leave it, from copies of the
    tiny runs."""
    d = tmp_path_factory.mktemp("sweep")
    for i, src in enumerate((runs["lip"], runs["gru"], runs["lip"])):
        shutil.copytree(src, d / "trials" / f"t{i}", ignore=shutil.ignore_patterns("checkpoints"))
    with open(d / "trials.csv", "w", newline="") as f:  # the columns lipschitz-rnn sweep writes
        w = csv.writer(f)
        w.writerow(["trial", "config_id", "status", "lr", "best_valid", "best_epoch", "valid_1",
                    "le0_max", "error"])
        w.writerow(["t0", "c0", "ok", 0.01, 0.31, 2, 0.2, -0.02, ""])
        w.writerow(["t1", "c1", "diverged", 0.1, "", "", "", "", "non-finite loss"])
        w.writerow(["t2", "c2", "ok", 0.003, 0.52, 1, 0.52, 0.01, ""])
    (d / "sweep.json").write_text(json.dumps({
        "spec": {"grid": {"lr": [0.01, 0.1, 0.003]}}, "wall_time_s": 12.5,
        "metric": {"name": "accuracy", "mode": "max"}}))
    (d / "study.md").write_text("# Study\n\nSpearman **rho** of `le0_max`:\n\n"
                                "| feature | rho |\n|---|---|\n| le0_max | 0.4 |\n")
    fig = Figure(figsize=(3, 2))
    fig.subplots().plot([0, 1], [1, 0])
    fig.savefig(d / "auc.png", format="png")
    (d / "broken.png").write_bytes(b"not a png")
    return d


def _lab_sweep(d):
    """A sweep directory as ``lipschitz-rnn sweep`` and ``study`` leave it, with made-up
    trial outcomes instead of training: the plan from a real spec, every trial an ordinary run
    directory (config.toml, metrics.jsonl, results.json, trial.json, probe_spectra.npz), then
    the sweep's own ``collect`` and ``run_study``. Two units x two learning rates x two init
    scales: four trials per unit, too few for the study's per-unit correlations."""
    from dataclasses import asdict

    from lipschitz_rnn.sweep import collect, load_spec, run_study

    spec = load_spec({"task": "digits", "model": "lipschitz",
                      "set": {"hidden_size": 4, "epochs": 3},
                      "grid": {"model": ["lipschitz", "gru"], "lr": [0.01, 0.003],
                               "model.init_scale": [0.5, 1.0]},
                      "lyapunov": {"at_epochs": [0, 2], "k": 4, "batch": 2}})
    (d / "sweep.json").write_text(json.dumps({
        "spec": spec.raw, "task": "digits", "metric": {"name": "accuracy", "mode": "max"},
        "max_epochs": spec.max_epochs, "swept_keys": spec.swept_keys,
        "lyapunov": asdict(spec.lyapunov), "scheduler": asdict(spec.scheduler),
        "probe": {"file": "probe.pt", "shape": [8, 2, 8], "split": "valid", "seed": 0,
                  "indices": [3, 5]},
        "trials": spec.plan(), "versions": {"lipschitz-rnn": "0", "torch": "2"},
        "sessions": [{"started": "2026-01-01T00:00:00+0000", "wall_s": 9.5, "resume": False,
                      "versions": {"lipschitz-rnn": "0", "torch": "2"}, "trials_run": 8}],
        "wall_s": 9.5}))
    rng = np.random.default_rng(0)
    for t in spec.trials:
        td = d / "trials" / t.id
        td.mkdir(parents=True)
        c = t.config
        (td / "config.toml").write_text(c.to_toml())
        scale = c.model_kwargs["init_scale"]
        top = 0.5 + 0.4 * rng.random()
        recs = [{"epoch": e, "train_loss": 2.0 / e, "valid_loss": 2.0 / e,
                 "valid_accuracy": top * (1 - 0.5 ** e), "seconds": 0.1} for e in (1, 2, 3)]
        (td / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
        (td / "results.json").write_text(json.dumps(
            {"test": {"accuracy": recs[-1]["valid_accuracy"], "loss": 0.7}}))
        (td / "trial.json").write_text(json.dumps({"status": "ok", "wall_s": 1.0}))
        base = -np.arange(1.0, 5.0) * (0.2 if c.model == "gru" else 0.1)
        le0 = np.stack([base + scale, base + scale - 0.01])  # (batch, k) at initialisation
        le2 = le0 + rng.normal(0.0, 0.05, size=(1, 4))
        np.savez(td / "probe_spectra.npz", le0=np.sort(le0)[:, ::-1], le2=np.sort(le2)[:, ::-1])
    collect(d)
    run_study(d, folds=2, bootstrap=100)
    return spec


@pytest.fixture(scope="module")
def lab_sweep(tmp_path_factory):
    d = tmp_path_factory.mktemp("lab") / "lab"
    d.mkdir()
    return d, _lab_sweep(d)


def test_sweep_page_curves_and_spectra_by_unit_and_swept_keys(lab_sweep):
    from lipschitz_rnn.report import figures

    d, spec = lab_sweep
    text = build_report([d])
    page = check_self_contained(text)
    by_part = {s["part"]: s for s in page.sections if s["part"]}
    assert by_part["trial-curves"]["images"] == 1
    # spectra without a study: curves, spectra and metric against the largest exponent
    assert by_part["trial-spectra"]["images"] == 2 and by_part["trial-spectra"]["notes"] == 0
    # the curves: one panel per unit, colour by one swept key and style by the other, a legend
    trials = [{"name": t.id, "model": t.config.model, "params": t.params,
               "records": [json.loads(line) for line in
                           (d / "trials" / t.id / "metrics.jsonl").read_text().splitlines()]}
              for t in spec.trials]
    fig = figures.trial_curves_figure(trials, "accuracy", spec.swept_keys)
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert sorted(ax.get_title() for ax in axes) == ["gru: 4 trial(s)", "lipschitz: 4 trial(s)"]
    labels = {t.get_text() for leg in fig.legends for t in leg.get_texts()}
    assert labels == {"lr = 0.003", "lr = 0.01", "model.init_scale = 0.5",
                      "model.init_scale = 1"}
    for ax in axes:  # four trials per unit, each its own (colour, style)
        styles = {(str(line.get_color()), line.get_linestyle()) for line in ax.get_lines()}
        assert len(ax.get_lines()) == 4 and len(styles) == 4
    spectra_fig = figures.trial_spectra_figure(
        [{**t, "spectra": {0: np.zeros(4), 2: np.zeros(4)}} for t in trials], [0, 2],
        spec.swept_keys)
    assert len(spectra_fig.axes) == 4 and spectra_fig.legends
    assert all("per step" in ax.get_ylabel() for ax in spectra_fig.axes[::2])
    # captions are sentences, never file names
    captions = re.findall(r"<figcaption>([^<]*)</figcaption>", text)
    assert captions and all(not c.endswith(".png") and c.endswith(".") for c in captions)
    assert any("one panel per unit" in c and "coloured by" in c for c in captions)


def test_sweep_page_rho_per_unit_is_computed_or_left_out(lab_sweep):
    from scipy.stats import spearmanr

    d, spec = lab_sweep
    page = Page(build_report([d]))
    # the report's own table, from trials.csv: rho per unit where defined
    rows = list(csv.DictReader((d / "trials.csv").open()))
    rho = next(t for t in page.tables if t["rows"][0][0] == "LE epoch")
    assert rho["rows"][0] == ["LE epoch", "all trials", "gru", "lipschitz"]
    cells = {r[0]: r[1:] for r in rho["rows"][1:]}
    for j, unit in enumerate(["all", "gru", "lipschitz"]):
        mine = [r for r in rows if unit == "all" or r["model"] == unit]
        x = [float(r["le2_max"]) for r in mine]
        y = [float(r["best_valid"]) for r in mine]
        assert cells["2"][j] == f"{spearmanr(x, y).statistic:+.2f} (n = {len(mine)})"
    # no table anywhere in the report holds dashes alone (with four trials per unit, the
    # study's own table per unit does: it is left out)
    for t in page.tables:
        data = [c for r in t["rows"][1:] for c in r[1:]]
        assert not data or any(c not in ("—", "") for c in data), t["rows"]


def test_study_tables_without_values_are_left_out(tmp_path):
    d = tmp_path / "s"
    d.mkdir()
    (d / "sweep.json").write_text("{}")
    (d / "study.md").write_text(
        "# Study\n\n## Kept\n\n| epoch | rho |\n|---|---|\n| 0 | 0.5 |\n\n"
        "## Spearman ρ per unit\n\n| epoch | gru | lstm |\n|---|---|---|\n| 0 | — | — |\n"
        "| 1 | — | — |\n\n## Notes\n\n- why a cell is empty\n")
    text = build_report([d])
    page = Page(text)
    assert [t["rows"] for t in page.tables if t["rows"][0][0] == "epoch"] == [
        [["epoch", "rho"], ["0", "0.5"]]]
    assert "Spearman ρ per unit</h" not in text and "Notes</h" in text
    assert any("Left out of the study" in n and "Spearman ρ per unit" in n for n in page.notes)


def test_sweep_settings_are_tables(lab_sweep):
    d, spec = lab_sweep
    text = build_report([d])
    page = Page(text)
    assert "<pre>" not in text.split('data-part="sweep-settings"')[1].split("</section>")[0]
    cells = {r[0]: r[1] for t in page.tables for r in t["rows"] if len(r) == 2}
    assert cells["grid.lr"] == "0.01, 0.003" and cells["grid.model"] == "lipschitz, gru"
    assert cells["metric.mode"] == "max" and cells["lyapunov.at_epochs"] == "0, 2"
    assert cells["trials"] == f"{len(spec.trials)} planned (see the Trials table)"
    assert cells["torch"] == "2"
    sessions = next(t for t in page.tables if "trials_run" in t["rows"][0])
    assert "versions.torch" not in sessions["rows"][0]  # the same as the sweep's versions
    assert dict(zip(*sessions["rows"], strict=True))["wall_s"] == "9.5"


def test_exponent_axes_name_their_unit():
    from lipschitz_rnn.analysis.plots import evolution_figure, exponent_label
    from lipschitz_rnn.report import figures

    assert exponent_label(1.0) == "Lyapunov exponent (per step)"
    assert exponent_label(0.1) == "Lyapunov exponent (per unit time, step dt = 0.1)"
    fig = evolution_figure([(1, [0.1, -0.2]), (2, [0.0, -0.3])])
    assert [ax.get_ylabel() for ax in fig.axes[:2]] == ["Lyapunov exponent (per step)"] * 2
    # a spectrum estimated with dt = 0.5 says so on both panels of the report's figure
    d = {"mean": [0.1, -0.2], "exponents": [[0.1, -0.2]], "dt": 0.5,
         "history": [[0.2, -0.1], [0.1, -0.2]], "history_steps": [1, 2]}
    svg_of = figures.svg_data_uri
    seen = []
    figures.svg_data_uri = lambda f: seen.append(f) or svg_of(f)
    try:
        figures.lyapunov_spectrum(d)
    finally:
        figures.svg_data_uri = svg_of
    labels = [ax.get_ylabel() for ax in seen[0].axes]
    assert labels == ["Lyapunov exponent (per unit time, step dt = 0.5)",
                      "running estimate (per unit time, step dt = 0.5)"]


def test_sweep_directory(sweep, runs, tmp_path):
    out = write_report([sweep, runs["lip"]], tmp_path / "sweep.html")
    page = check_self_contained(out.read_text())
    sw = [s for s in page.sections if s["class"] == "sweep"]
    assert len(sw) == 1
    assert [p for p in page.parts() if p not in RUN_PARTS] == [
        "sweep-settings", "trials", "trial-curves", "trial-spectra", "study"]
    by_part = {s["part"]: s for s in page.sections if s["part"]}
    assert by_part["trial-curves"]["images"] == 1 and by_part["study"]["images"] == 1
    trials = next(t for t in page.tables if "trials" in t["class"])
    assert "sortable" in trials["class"]
    assert [r[0] for r in trials["rows"][1:]] == ["t2", "t0", "t1"]  # best accuracy first
    study = next(t for t in page.tables if t["rows"][0] == ["feature", "rho"])
    assert study["rows"][1] == ["le0_max", "0.4"]
    assert any("broken.png is not a PNG" in n for n in page.notes)


def test_sweep_without_study_or_trials(tmp_path):
    d = tmp_path / "empty_sweep"
    d.mkdir()
    (d / "sweep.json").write_text("{}")
    page = check_self_contained(build_report([d]), images=False)
    joined = " ".join(page.notes)
    assert "No trials.csv" in joined and "No study" in joined and "No trials/ folder" in joined


def test_sweep_order_follows_the_metric_mode(tmp_path):
    d = tmp_path / "mse_sweep"
    d.mkdir()
    (d / "trials.csv").write_text("trial,status,best_valid\na,ok,0.5\nb,ok,0.1\nc,failed,\n"
                                  "e,ok,nan\n")
    (d / "sweep.json").write_text(json.dumps({"metric": {"name": "mse", "mode": "min"}}))
    trials = next(t for t in Page(build_report([d])).tables if "trials" in t["class"])
    assert [r[0] for r in trials["rows"][1:]] == ["b", "a", "c", "e"]  # lowest first, blanks last


def test_missing_pieces_are_notes(runs, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(runs["lip"] / "config.toml", bare / "config.toml")
    page = Page(build_report([bare]))
    assert page.parts() == RUN_PARTS
    joined = " ".join(page.notes)
    assert "No epoch has finished" in joined and "No checkpoints/best.pt" in joined
    # a damaged analysis file is a note too
    broken = tmp_path / "broken"
    shutil.copytree(runs["lip"], broken)
    (broken / "hessian.json").write_text("{not json")
    (broken / "checkpoints" / "best.pt").write_bytes(b"")
    page = Page(build_report([broken]))
    joined = " ".join(page.notes)
    assert "hessian.json could not be read" in joined
    assert "could not be rebuilt" in joined and "damaged" in joined


def test_results_are_read_verified(runs, tmp_path):
    """The report reads results.json through the run directory's reader: numbers that do not
    match the checksum recorded when the run wrote them are a note, not the run's results."""
    run = tmp_path / "tampered"
    shutil.copytree(runs["lip"], run, ignore=shutil.ignore_patterns("checkpoints"))
    res = json.loads((run / "results.json").read_text())
    res["num_parameters"] = 987654321
    (run / "results.json").write_text(json.dumps(res))
    text = build_report([run])
    joined = " ".join(Page(text).notes)
    assert "results.json could not be read" in joined and "damaged" in joined
    assert "987654321" not in text


def test_not_a_run_is_refused_and_nothing_written(runs, tmp_path, capsys):
    other = tmp_path / "other"
    other.mkdir()
    out = tmp_path / "r.html"
    with pytest.raises(ValueError, match=re.escape(str(other))):
        write_report([runs["lip"], other], out)
    with pytest.raises(ValueError, match="not a directory"):
        write_report([tmp_path / "missing"], out)
    with pytest.raises(ValueError, match="paths is empty"):
        write_report([], out)
    with pytest.raises(ValueError, match="out: .* is a directory"):
        write_report([runs["lip"]], tmp_path)
    with pytest.raises(TypeError, match="out"):
        write_report([runs["lip"]], 3)
    assert not out.exists()
    assert main(["report", str(other), "--out", str(out)]) == 2
    assert "neither a run directory" in capsys.readouterr().out
    assert not out.exists() and list(tmp_path.iterdir()) == [other]


def test_markdown_subset():
    html_text = markdown("## Head\n\ntext with `a|b` and **bold**\n\n"
                         "| a | b \\| c |\n|---|---|\n| 1 | 2 |\n\n- one\n- two\n\n```\nx < y\n```")
    page = Page(html_text)
    assert page.tables[0]["rows"] == [["a", "b | c"], ["1", "2"]]
    assert "<h4>Head</h4>" in html_text and "<strong>bold</strong>" in html_text
    assert "<code>a|b</code>" in html_text and "<pre>x &lt; y</pre>" in html_text
    assert "<li>one</li><li>two</li>" in html_text


# --- a real browser -------------------------------------------------------------------------
def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome-stable", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _run_chromium(args, tmp_path):
    exe = _chromium()
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           "--hide-scrollbars", "--enable-logging=stderr", "--v=0",
           f"--user-data-dir={tmp_path / 'chromium-profile'}", "--virtual-time-budget=5000",
           *args]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    console = [l for l in p.stderr.splitlines() if ":CONSOLE" in l]
    return p, console


needs_chromium = pytest.mark.skipif(
    _chromium() is None,
    reason="no headless Chromium (Debian: apt-get install chromium; .ci/run installs it)",
)


@needs_chromium
def test_browser_harness_sees_console_errors(tmp_path):
    # the check below is only as good as its ability to see an error: show that it does
    bad = tmp_path / "bad.html"
    bad.write_text("<!DOCTYPE html><html><body><script>throw new Error('planted-error')"
                   "</script></body></html>")
    _, console = _run_chromium(["--dump-dom", bad.as_uri()], tmp_path)
    assert any("planted-error" in l for l in console)


@needs_chromium
def test_browser_renders_report(runs, sweep, tmp_path):
    out = write_report([sweep, runs["lip"], runs["gru"]], tmp_path / "report.html")
    # a probe appended to a copy: after load, count the images the browser decoded, and click
    # the trials table's best-metric head twice (ascending, then descending)
    probe = out.read_text().replace("</body>", """<script>
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  var th = document.querySelector("table.trials th:nth-child(5)");
  th.click(); th.click();
  var ids = Array.prototype.map.call(
    document.querySelectorAll("table.trials tbody tr"), function (r) { return r.cells[0].textContent; });
  document.body.setAttribute("data-probe", ok + "/" + imgs.length + ";" + ids.join(","));
});
</script></body>""")
    probed = tmp_path / "probe.html"
    probed.write_text(probe)
    p, console = _run_chromium(["--dump-dom", probed.as_uri()], tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    assert console == []
    m = re.search(r'data-probe="(\d+)/(\d+);([^"]*)"', p.stdout)
    assert m, p.stdout[-500:]
    assert m.group(1) == m.group(2) and int(m.group(2)) >= 10
    assert m.group(3) == "t2,t0,t1"  # descending numeric sort, the empty cell last

    shot = tmp_path / "shot.png"
    p, console = _run_chromium(["--window-size=1280,1600", f"--screenshot={shot}", out.as_uri()],
                               tmp_path)
    assert p.returncode == 0 and console == [], (console, p.stderr[-2000:])
    img = matplotlib.image.imread(shot)
    assert img.shape[:2] == (1600, 1280)
    rgb = img[..., :3].reshape(-1, 3)
    assert rgb.std() > 0.05  # not blank
    assert len(np.unique((rgb * 255).round().astype(np.uint8), axis=0)) > 50
