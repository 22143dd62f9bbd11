"""Analyses of run directories through the CLI: hessian, robustness, compare, lyapunov."""

import json

import pytest

from lipschitz_rnn.cli import main
from lipschitz_rnn.runs.config import TrainConfig
from lipschitz_rnn.train.loop import train


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for model, kw in (("lipschitz", {"solver": "euler", "eps": 0.3}), ("gru", {})):
        cfg = TrainConfig(
            task="digits",
            model=model,
            hidden_size=6,
            epochs=1,
            batch_size=32,
            max_batches=4,
            lr=0.01,
            model_kwargs=kw,
            lyapunov_every=1,
            lyapunov_batch=4,
        ).validate()
        train(cfg, root / model)
        out[model] = root / model
    return out


def test_metrics_log_lyapunov(runs):
    rec = json.loads((runs["lipschitz"] / "metrics.jsonl").read_text().splitlines()[0])
    ly = rec["lyapunov"]
    assert len(ly["spectrum"]) == 6 and ly["max"] == max(ly["spectrum"])
    assert ly["spectrum"] == sorted(ly["spectrum"], reverse=True)


def test_lyapunov_cli(runs, capsys):
    run = runs["gru"]
    assert main(["lyapunov", str(run), "--batch", "3", "--k", "4"]) == 0
    d = json.loads((run / "lyapunov.json").read_text())
    assert len(d["mean"]) == 4 and (run / "lyapunov.png").stat().st_size > 0
    assert "Kaplan-Yorke" in capsys.readouterr().out
    assert main(["lyapunov", str(runs["lipschitz"]), "--evolution"]) == 0
    assert (runs["lipschitz"] / "lyapunov_evolution.png").stat().st_size > 0


def test_hessian_robustness_compare(runs, tmp_path, capsys):
    for run in runs.values():
        assert main(["hessian", str(run), "--batches", "1", "--batch-size", "16"]) == 0
        h = json.loads((run / "hessian.json").read_text())
        assert h["eigenvalues"][0] >= h["min_eigenvalue"]
        assert (run / "hessian.png").stat().st_size > 0
        assert (
            main(
                [
                    "robustness",
                    str(run),
                    "--batches",
                    "1",
                    "--batch-size",
                    "64",
                    "--input-sigmas",
                    "0",
                    "0.5",
                    "--weight-sigmas",
                    "0",
                    "0.1",
                    "--seeds",
                    "2",
                ]
            )
            == 0
        )
        r = json.loads((run / "robustness.json").read_text())
        clean = json.loads((run / "results.json").read_text())
        # sigma = 0 reproduces the clean metric of the same test batch exactly
        assert r["curves"]["input"]["mean"][0] == r["curves"]["input"]["clean"]
        assert r["curves"]["weight"]["std"][0] == 0.0
        # every curve is labelled with the task's metric, not the function's name
        assert r["metric"] == "accuracy"
        assert {c["metric"] for c in r["curves"].values()} == {"accuracy"}
        assert 0 <= clean["test"]["accuracy"] <= 1
    assert main(["compare", *map(str, runs.values()), "--out", str(tmp_path)]) == 0
    md = (tmp_path / "compare.md").read_text()
    assert "lipschitz" in md and "gru" in md
    csv_lines = (tmp_path / "compare.csv").read_text().splitlines()
    assert len(csv_lines) == 3


def test_errors(tmp_path, runs):
    assert main(["hessian", str(tmp_path / "nope")]) == 2
    assert main(["robustness", str(tmp_path / "nope")]) == 2
    assert main(["compare", str(tmp_path / "nope")]) == 2
    assert main(["robustness", str(runs["gru"]), "--input-sigmas", "-1"]) == 2
