"""The run-directory layer (lipschitz_rnn.runs): one reader of run and sweep directories, the
metric's direction decided once, and the layering of the packages above it."""

import ast
import csv
import json
from pathlib import Path

import pytest
import torch

from lipschitz_rnn.runs.config import TrainConfig
from lipschitz_rnn.runs.rundir import RunDir, load_run
from lipschitz_rnn.runs.sweepdir import SweepDir, parse_cell
from lipschitz_rnn.runs.tasks import TaskRunner, higher_is_better
from lipschitz_rnn.train.loop import train

SRC = Path(__file__).resolve().parents[1] / "src" / "lipschitz_rnn"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("rundir") / "run"
    cfg = TrainConfig(task="digits", model="lipschitz", hidden_size=6, epochs=1, batch_size=32,
                      max_batches=2, model_kwargs={"solver": "rk2", "eps": 0.3}).validate()
    train(cfg, out)
    return out


def test_reading_a_run_leaves_every_rng_alone(run_dir):
    """Rebuilding the model draws initial weights, which the checkpoint replaces: the reader
    does it under fork_rng, so reading a run (for a report, an analysis) changes no stream."""
    torch.manual_seed(123)
    before = torch.get_rng_state()
    _, _, model = load_run(run_dir, data=False)
    layer = RunDir(run_dir).layer("best")
    assert torch.equal(torch.get_rng_state(), before)
    a = {k[len("rnn."):]: v for k, v in model.state_dict().items() if k.startswith("rnn.")}
    b = layer.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_run_dir_reads_what_the_loop_wrote(run_dir):
    run = RunDir(run_dir)
    assert run.is_run() and run.config().hidden_size == 6
    records = run.records()
    assert [r["epoch"] for r in records] == [1] and run.results()["epochs"] == 1
    assert run.metric() == "accuracy" and run.higher_is_better()
    assert run.sizes() == {"input_size": 8, "output_size": 10, "readout": "last",
                           "vocab_size": None}
    assert run.analysis("lyapunov") is None
    with pytest.raises(ValueError, match="name must be one of"):
        run.analysis("results")
    with pytest.raises(FileNotFoundError, match="not a run directory"):
        RunDir(run_dir.parent).config()
    with pytest.raises(TypeError, match="run_dir must be a path"):
        RunDir(3)


def test_a_damaged_metrics_line_is_named(tmp_path):
    run = RunDir(tmp_path)
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 1}\n[1, 2]\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl is damaged \(line 2"):
        run.records()
    problems = []
    assert run.records(problems) == [{"epoch": 1}]
    assert problems == ["metrics.jsonl: line 2 is not a JSON object (skipped)"]


def test_the_metric_direction_is_decided_once():
    assert higher_is_better("accuracy")
    assert not any(higher_is_better(m) for m in ("mse", "bpc", "loss"))
    runner = TaskRunner(TrainConfig(task="adding", task_kwargs={"length": 5}).validate(),
                        device=torch.device("cpu"))
    assert runner.metric_name == "mse" and runner.higher_is_better is False
    # a sweep's recorded mode wins; without one, the metric's rule
    assert SweepDir.metric({"metric": {"name": "mse", "mode": "max"}}) == ("mse", True)
    assert SweepDir.metric({"metric": {"name": "accuracy"}}) == ("accuracy", True)
    assert SweepDir.metric({"metric": {"name": "bpc"}}) == ("bpc", False)
    assert SweepDir.metric(None) == (None, False)


def test_trials_csv_has_one_reader(tmp_path):
    """trials.csv as collect writes it (integers as integers, other numbers with a point or an
    exponent, missing values empty): the study and the report read the same values, and the
    study takes an integer swept key as a number."""
    from lipschitz_rnn.sweep.study import feature_matrix, load_trials

    assert [parse_cell(v) for v in ("", "3", "0.5", "1e-05", "inf", "t001", "True")] == [
        None, 3, 0.5, 1e-05, float("inf"), "t001", "True"]
    with open(tmp_path / "trials.csv", "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["trial", "config_id", "status", "hidden_size", "seed", "best_valid",
                    "best_epoch", "error"])
        w.writerow(["t0", "c0", "ok", 16, 0, 0.5, 2, ""])
        w.writerow(["t1", "c1", "ok", 256, 0, 0.75, 1, ""])
        w.writerow([])
        w.writerow(["t2", "c2", "failed", 64, 1, "", ""])  # a short row
    meta = {"metric": {"name": "accuracy", "mode": "max"}, "swept_keys": ["hidden_size", "seed"]}
    (tmp_path / "sweep.json").write_text(json.dumps(meta))
    sweep = SweepDir(tmp_path)
    rows = sweep.trials()
    assert [r["trial"] for r in rows] == ["t0", "t1", "t2"]
    assert rows[0]["hidden_size"] == 16 and type(rows[0]["hidden_size"]) is int
    assert type(rows[0]["seed"]) is int and type(rows[0]["best_valid"]) is float
    assert rows[2]["best_valid"] is None and rows[2]["error"] is None
    study_rows, study_meta, spectra = load_trials(tmp_path)
    assert study_rows == rows and study_meta == meta and spectra == {}
    X, names = feature_matrix(rows, meta, spectra, "hyperparameters", 0)
    assert names == ["log10 hidden_size"]
    assert X[:, 0].tolist() == pytest.approx([1.2041199826559248, 2.408239965311849,
                                              1.8061799739838871])
    (tmp_path / "trials.csv").unlink()
    with pytest.raises(FileNotFoundError, match="trials.csv is missing"):
        sweep.trials()


def _imports(path: Path) -> set[str]:
    """The modules a file imports, as absolute names (``lipschitz_rnn.x.y``)."""
    package = ".".join(path.relative_to(SRC.parent).with_suffix("").parts[:-1])
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                out.add(".".join([*base, *([node.module] if node.module else [])]))
            else:
                out.add(node.module or "")
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


@pytest.mark.parametrize("package, above", [
    ("runs", ("train", "sweep", "report", "cli")),
    ("report", ("train", "sweep", "cli")),
    ("train", ("sweep", "report", "cli")),
])
def test_dependencies_point_downward(package, above):
    """runs/ sits below train/, sweep/ and report/; the report reads runs, never the training
    package (and no package imports the command line)."""
    for path in sorted((SRC / package).rglob("*.py")):
        bad = sorted(m for m in _imports(path)
                     if any(m == f"lipschitz_rnn.{a}" or m.startswith(f"lipschitz_rnn.{a}.")
                            for a in above))
        assert not bad, (str(path.relative_to(SRC)), bad)
