"""Sweep specs beyond one grid: per-unit ranges in [sample] (``by_model``) and [[grid]] unions."""

import math

import pytest

from lipschitz_rnn.sweep import load_spec

BASE = {"task": "digits", "model": "lstm", "set": {"hidden_size": 4}}


def _spec(**sample):
    return {**BASE, "grid": {"model": ["rnn", "lipschitz"]}, "sample": {"n": 5, "seed": 3, **sample}}


def test_by_model_maps_one_quantile_into_each_units_range():
    spec = load_spec(_spec(**{"model.init_scale": {
        "loguniform": [0.02, 1.0], "by_model": {"lipschitz": [16.0, 256.0]}}}))
    rnn = [t for t in spec.trials if t.config.model == "rnn"]
    lip = [t for t in spec.trials if t.config.model == "lipschitz"]
    assert len(rnn) == len(lip) == 5
    for a, b in zip(rnn, lip, strict=True):
        pa, pb = a.params["model.init_scale"], b.params["model.init_scale"]
        assert 0.02 <= pa <= 1.0 and 16.0 <= pb <= 256.0
        # the same quantile of the draw: the position within each log-range agrees
        qa = math.log(pa / 0.02) / math.log(1.0 / 0.02)
        qb = math.log(pb / 16.0) / math.log(256.0 / 16.0)
        assert qa == pytest.approx(qb, abs=1e-12)
        # and it reaches the unit: the Lipschitz cell's init_std, the others' U(-p, p)
        assert b.config.model_kwargs["init_scale"] == pb
    assert len({t.config_id for t in spec.trials}) == 10
    again = load_spec(spec.raw)
    assert [t.params for t in again.trials] == [t.params for t in spec.trials]


def test_by_model_uniform_and_units_without_an_entry_use_the_default():
    spec = load_spec(_spec(**{"model.dropout": {"uniform": [0.0, 0.5],
                                                "by_model": {"lipschitz": [0.1, 0.2]}}}))
    for t in spec.trials:
        lo, hi = (0.1, 0.2) if t.config.model == "lipschitz" else (0.0, 0.5)
        assert lo <= t.params["model.dropout"] <= hi


def test_by_model_with_a_sampled_unit():
    spec = load_spec({**BASE, "sample": {"n": 12, "seed": 0,
                                         "model": {"choice": ["gru", "lipschitz"]},
                                         "model.init_scale": {"loguniform": [0.1, 1.0],
                                                              "by_model": {"lipschitz": [20, 40]}}}})
    units = {t.config.model for t in spec.trials}
    assert units == {"gru", "lipschitz"}
    for t in spec.trials:
        lo, hi = (20, 40) if t.config.model == "lipschitz" else (0.1, 1.0)
        assert lo <= t.params["model.init_scale"] <= hi


def test_draws_without_by_model_are_unchanged():
    """Adding per-unit ranges to one key must not move the other keys' draws."""
    plain = load_spec(_spec(lr={"loguniform": [1e-4, 1e-2]}))
    with_ranges = load_spec(_spec(lr={"loguniform": [1e-4, 1e-2]}, **{"model.init_scale": {
        "loguniform": [0.02, 1.0], "by_model": {"lipschitz": [16.0, 256.0]}}}))
    assert [t.params["lr"] for t in plain.trials] == [t.params["lr"] for t in with_ranges.trials]


@pytest.mark.parametrize(
    "dist,exc,needle",
    [
        ({"choice": [0.1, 0.2], "by_model": {"rnn": [1, 2]}}, ValueError, "not choice"),
        ({"uniform": [0.1, 1.0], "by_model": {"nope": [1, 2]}}, ValueError, "unknown unit 'nope'"),
        ({"uniform": [0.1, 1.0], "by_model": {"rnn": [2, 1]}}, ValueError, "by_model.rnn"),
        ({"loguniform": [0.1, 1.0], "by_model": {"rnn": [0, 1]}}, ValueError, "low > 0"),
        ({"uniform": [0.1, 1.0], "by_model": []}, TypeError, "by_model must be a table"),
        ({"uniform": [0.1, 1.0], "by_model": {"rnn": "x"}}, TypeError, "low, high"),
    ],
)
def test_bad_by_model_is_refused_naming_the_key(dist, exc, needle):
    with pytest.raises(exc, match=needle) as info:
        load_spec(_spec(**{"model.init_scale": dist}))
    assert "[sample] model.init_scale" in str(info.value)


def test_grid_array_is_the_union_of_its_products(tmp_path):
    p = tmp_path / "s.toml"
    p.write_text(
        'task = "digits"\nmodel = "rnn"\n[set]\nhidden_size = 4\n'
        '[[grid]]\nmodel = ["lstm", "gru"]\nseed = [0, 1]\n'
        '[[grid]]\nmodel = ["rnn"]\nlr = [0.001, 0.01, 0.1]\nseed = [0, 1]\n'
    )
    spec = load_spec(p)
    got = [(t.config.model, t.params.get("lr"), t.config.seed) for t in spec.trials]
    assert got == [("lstm", None, 0), ("lstm", None, 1), ("gru", None, 0), ("gru", None, 1)] + [
        ("rnn", lr, s) for lr in (0.001, 0.01, 0.1) for s in (0, 1)]
    assert spec.swept_keys == ["model", "seed", "lr"]
    assert len(spec.grids) == 2 and spec.grid["model"] == ["lstm", "gru", "rnn"]
    # seeds repeat a configuration, across the grids too
    assert len({t.config_id for t in spec.trials}) == 5
    assert [t.id for t in spec.trials] == [f"t{i:03d}" for i in range(10)]


def test_grid_array_times_sample_and_its_errors():
    spec = load_spec({**BASE, "grid": [{"model": ["rnn"]}, {"model": ["gru"], "seed": [3]}],
                      "sample": {"n": 2, "lr": {"loguniform": [1e-4, 1e-2]}}})
    assert [t.config.model for t in spec.trials] == ["rnn", "rnn", "gru", "gru"]
    assert spec.trials[0].params["lr"] == spec.trials[2].params["lr"]  # the same draws
    with pytest.raises(ValueError, match=r"\[\[grid\]\]: the array is empty"):
        load_spec({**BASE, "grid": []})
    with pytest.raises(ValueError, match=r"\[grid\] lr: the list is empty"):
        load_spec({**BASE, "grid": [{"model": ["rnn"]}, {"lr": []}]})
    with pytest.raises(ValueError, match=r"\[grid\] hidden_size: also in \[set\]"):
        load_spec({**BASE, "grid": [{"model": ["rnn"]}, {"hidden_size": [2]}]})


def test_study_table_declares_the_study_defaults():
    base = {**BASE, "grid": {"model": ["rnn", "lipschitz"], "seed": [0, 1]},
            "sample": {"n": 3, "seed": 1, "model.init_scale": {"loguniform": [0.1, 1.0]},
                       "lr": {"loguniform": [1e-3, 1e-2]}}}
    spec = load_spec({**base, "study": {"equivalent": "model=lipschitz:model.init_scale",
                                        "ood_key": "lr"}})
    assert spec.study.equivalent == ("model=lipschitz:model.init_scale",)
    assert spec.study.ood_key == "lr"
    assert load_spec(base).study.equivalent == () and load_spec(base).study.ood_key is None
    # a fixed unit is a condition too (trials.csv records it)
    fixed = {**BASE, "grid": {"lr": [1e-3, 1e-2]}, "study": {"equivalent": ["model=lstm:lr"]}}
    assert load_spec(fixed).study.equivalent == ("model=lstm:lr",)
    for study, exc, needle in [
        ({"equivalnt": "lr"}, ValueError, r"\[study\] equivalnt: unknown key"),
        ({"equivalent": 3}, TypeError, r"\[study\] equivalent: expected a string"),
        ({"equivalent": "model=lipschitz:hidden_size"}, ValueError, "not a swept key"),
        ({"equivalent": "model=gru:lr"}, ValueError, "no trial has model = gru"),
        ({"ood_key": "seed"}, ValueError, r"\[study\] ood_key: expected a swept key"),
        ({"ood_key": "hidden_size"}, ValueError, "ood_key"),
        ("lr", TypeError, r"\[study\] must be a table"),
    ]:
        with pytest.raises(exc, match=needle):
            load_spec({**base, "study": study})


def test_resume_takes_a_changed_study_table_and_refuses_any_other_change(tmp_path):
    """A finished sweep can be given [study] declarations afterwards (``sweep --resume`` with
    the edited spec); a change to what the trials run is still refused, nothing written."""
    import json

    from lipschitz_rnn.sweep.runner import _check_out

    base = {**BASE, "grid": {"lr": [1e-3, 1e-2], "seed": [0, 1]}}
    (tmp_path / "sweep.json").write_text(json.dumps({"spec": load_spec(base).raw, "x": 1}))
    declared = {**base, "study": {"equivalent": "lr"}}
    stored = _check_out(tmp_path, True, load_spec(declared))
    assert stored["spec"]["study"] == {"equivalent": "lr"} and stored["x"] == 1
    assert json.loads((tmp_path / "sweep.json").read_text())["spec"]["study"] == {
        "equivalent": "lr"}
    before = (tmp_path / "sweep.json").read_text()
    with pytest.raises(ValueError, match=r"beyond its \[study\] table"):
        _check_out(tmp_path, True, load_spec({**declared, "set": {"hidden_size": 5}}))
    assert (tmp_path / "sweep.json").read_text() == before
