"""The sweep specification: a TOML file (or dict), parsed and checked before any trial starts.

::

    preset = "digits-lipschitz"          # or task = "..." (and model = "...")
    [set]                                 # fixed overrides: the keys of ``train --set``
    hidden_size = 8
    "model.eps" = 0.1                     # or a [set.model] table
    [grid]                                # every combination of the listed values
    model = ["rnn", "lstm"]                # ([[grid]] tables: the union of their products)
    "model.init_scale" = [0.1, 1.0]
    seed = [0, 1]                         # seeds repeat a configuration
    [sample]                              # n random points, each combined with the grid
    n = 4
    seed = 0
    lr = { loguniform = [1e-4, 1e-2] }    # also uniform = [lo, hi], choice = [a, b, ...]
    # a range per unit (same quantile of the draw, mapped into the trial's unit's range):
    "model.init_scale" = { loguniform = [0.02, 1.0], by_model = { lipschitz = [16, 256] } }
    [lyapunov]                            # spectra on one fixed probe input
    at_epochs = [0, 1, 2]                 # 0 = at initialisation
    k = 8
    [scheduler]
    kind = "asha"                         # "fifo" (default), "asha", "lyapunov"

:func:`load_spec` returns a :class:`SweepSpec`; every error (unknown key, empty list, wrong
type, a configuration the training code refuses, ``at_epochs`` beyond ``epochs``) is a
ValueError or TypeError naming the table and the key.
"""

from __future__ import annotations

import itertools
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from ..data import TASKS
from ..models import MODELS
from ..runs.config import TrainConfig, resolve_config

__all__ = ["SweepSpec", "LyapunovSpec", "SchedulerSpec", "StudySpec", "TrialPlan", "load_spec",
           "parse_equivalence", "declared_study", "check_ood_key"]

TOP_KEYS = ("preset", "task", "model", "description", "set", "grid", "sample", "lyapunov",
            "scheduler", "study")
#: keys of ``[study]``: defaults of ``lipschitz-rnn study`` declared with the sweep
STUDY_KEYS = ("equivalent", "ood_key")
LYAPUNOV_KEYS = ("at_epochs", "k", "steps", "warmup", "batch", "seed")
SCHEDULER_KINDS = ("fifo", "asha", "lyapunov")
#: options of the built-in schedulers (a ``lyapunov`` scheduler gets its options unchecked)
SCHEDULER_OPTIONS = {"fifo": (), "asha": ("grace_period", "reduction_factor")}
DISTRIBUTIONS = ("uniform", "loguniform", "choice")
_CONFIG_KEYS = {f.name: f for f in fields(TrainConfig)}
#: the tables whose keys are given one by one as TABLE.KEY
_TABLES = ("model", "task", "flossing")


@dataclass(frozen=True)
class LyapunovSpec:
    """``[lyapunov]``: spectra at ``at_epochs`` (0 = before training) of the ``k`` largest
    exponents (0: all) over ``steps`` steps (0: all after ``warmup``) of a probe of ``batch``
    validation sequences drawn with ``seed``."""

    at_epochs: tuple[int, ...] = ()
    k: int = 0
    steps: int = 0
    warmup: int = 0
    batch: int = 8
    seed: int = 0


@dataclass(frozen=True)
class SchedulerSpec:
    """``[scheduler]``: ``kind`` and its options (passed to the scheduler factory)."""

    kind: str = "fifo"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StudySpec:
    """``[study]``: what ``lipschitz-rnn study`` assumes for this sweep unless told otherwise:
    ``equivalent`` near-duplicate declarations (``"KEY=VALUE:IGNORED[,IGNORED]"``, see
    :func:`parse_equivalence`) and ``ood_key``, the swept key whose
    top range the study leaves out (None: its default)."""

    equivalent: tuple[str, ...] = ()
    ood_key: str | None = None


@dataclass(frozen=True)
class TrialPlan:
    """One trial: its id (its folder under ``trials/``), the swept values, the id of its
    configuration without the seed (seeds of one configuration share it) and its config."""

    id: str
    params: dict[str, Any]
    config_id: str
    config: TrainConfig


@dataclass
class SweepSpec:
    raw: dict[str, Any]
    base: dict[str, Any]
    fixed: dict[str, Any]
    grid: dict[str, list]
    sample_n: int
    sample_seed: int
    sample: dict[str, dict[str, Any]]
    lyapunov: LyapunovSpec
    scheduler: SchedulerSpec
    trials: list[TrialPlan]
    #: the grids whose products are unioned (one for ``[grid]``, several for ``[[grid]]``);
    #: ``grid`` lists every grid key with all its values
    grids: list[dict[str, list]] = field(default_factory=list)
    study: StudySpec = field(default_factory=StudySpec)

    @property
    def swept_keys(self) -> list[str]:
        return list(self.grid) + list(self.sample)

    @property
    def max_epochs(self) -> int:
        return max(t.config.epochs for t in self.trials)

    def plan(self) -> list[dict[str, Any]]:
        """The trials as JSON-able dicts (what ``sweep.json`` records)."""
        return [
            {"id": t.id, "config_id": t.config_id, "params": t.params, "model": t.config.model,
             "seed": t.config.seed}
            for t in self.trials
        ]


def _where(table: str, key: str) -> str:
    return f"[{table}] {key}" if table else key


def _is_distribution(value: Any) -> bool:
    if not isinstance(value, dict) or not value:
        return False
    kinds = [k for k in value if k in DISTRIBUTIONS]
    return len(kinds) == 1 and set(value) <= {kinds[0], "by_model"}


@dataclass(frozen=True)
class _Quantile:
    """A uniform/loguniform draw with per-unit ranges, kept as its quantile ``u`` in [0, 1)
    until the trial's unit is known (:meth:`value`)."""

    u: float
    kind: str
    default: tuple[float, float]
    by_model: tuple[tuple[str, tuple[float, float]], ...]

    def value(self, model: str) -> float:
        lo, hi = dict(self.by_model).get(model, self.default)
        if self.kind == "uniform":
            return float(lo + (hi - lo) * self.u)
        return float(math.exp(math.log(lo) + (math.log(hi) - math.log(lo)) * self.u))


def _check_range(where: str, kind: str, arg: Any) -> tuple[float, float]:
    if not isinstance(arg, list) or len(arg) != 2 or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in arg
    ):
        raise TypeError(f"{where}: {kind} takes [low, high] (numbers), got {arg!r}")
    lo, hi = float(arg[0]), float(arg[1])
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"{where}: {kind} needs finite low < high, got {arg!r}")
    if kind == "loguniform" and lo <= 0:
        raise ValueError(f"{where}: loguniform needs low > 0, got {arg!r}")
    return lo, hi


def _flatten(table: str, d: dict[str, Any]) -> dict[str, Any]:
    """``{"model": {"eps": 0.1}}`` -> ``{"model.eps": 0.1}`` (TOML dotted keys and sub-tables;
    in ``[sample]`` a distribution table such as ``model = { choice = [...] }`` stays)."""
    out: dict[str, Any] = {}
    for key, value in d.items():
        leaf = table == "sample" and _is_distribution(value)
        if isinstance(value, dict) and key in _TABLES and not leaf:
            for sub, v in value.items():
                if isinstance(v, dict) and not (table == "sample" and _is_distribution(v)):
                    raise TypeError(f"{_where(table, f'{key}.{sub}')}: nested tables are not "
                                    "settings")
                out[f"{key}.{sub}"] = v
        else:
            out[key] = value
    return out


def _check_key(table: str, key: str) -> None:
    head, dot, rest = key.partition(".")
    if dot:
        if head not in _TABLES or not rest:
            raise ValueError(f"{_where(table, key)}: unknown key; use a setting of train --set "
                             "(model.*, task.* and flossing.* for the unit's, the task's and "
                             "gradient flossing's options)")
    elif key not in _CONFIG_KEYS:
        raise ValueError(f"{_where(table, key)}: unknown key; known: {sorted(_CONFIG_KEYS)} "
                         "and model.*, task.*, flossing.*")


def _check_value(table: str, key: str, value: Any) -> None:
    """A value's type against the TrainConfig field (ints are accepted for floats)."""
    if isinstance(value, dict) and key not in ("model_kwargs", "task_kwargs"):
        raise TypeError(f"{_where(table, key)}: expected a value, got the table {value!r}")
    if "." in key:
        return  # the unit or the task checks its own options (see _check_configs)
    default = _CONFIG_KEYS[key].default
    if default is None or not isinstance(default, (int, float, str, bool)):
        want = list if key == "lr_decay_epochs" else dict if key.endswith("_kwargs") else None
        if want is not None and not isinstance(value, want):
            raise TypeError(f"{_where(table, key)}: expected a {want.__name__}, got {value!r}")
        return
    ok = type(value) is type(default) or (
        isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool)
    )
    if not ok:
        raise TypeError(
            f"{_where(table, key)}: expected {type(default).__name__}, got "
            f"{type(value).__name__} {value!r}"
        )


def _as_int(where: str, value: Any, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{where}: expected an int >= {lo}, got {type(value).__name__} {value!r}")
    if value < lo:
        raise ValueError(f"{where}: expected an int >= {lo}, got {value}")
    return value


def _check_table(name: str, d: Any, keys: tuple[str, ...]) -> None:
    """``[name]`` is a table whose keys are among ``keys``."""
    if not isinstance(d, dict):
        raise TypeError(f"[{name}] must be a table, got {d!r}")
    unknown = sorted(set(d) - set(keys))
    if unknown:
        raise ValueError(f"[{name}] {unknown[0]}: unknown key; known: {list(keys)}")


def _parse_lyapunov(d: Any) -> LyapunovSpec:
    _check_table("lyapunov", d, LYAPUNOV_KEYS)
    at = d.get("at_epochs", [])
    if not isinstance(at, list):
        raise TypeError(f"[lyapunov] at_epochs: expected a list of ints >= 0, got {at!r}")
    if "at_epochs" in d and not at:
        raise ValueError("[lyapunov] at_epochs: the list is empty")
    epochs = tuple(sorted({_as_int("[lyapunov] at_epochs", e, 0) for e in at}))
    return LyapunovSpec(
        at_epochs=epochs,
        k=_as_int("[lyapunov] k", d.get("k", 0), 0),
        steps=_as_int("[lyapunov] steps", d.get("steps", 0), 0),
        warmup=_as_int("[lyapunov] warmup", d.get("warmup", 0), 0),
        batch=_as_int("[lyapunov] batch", d.get("batch", 8), 1),
        seed=_as_int("[lyapunov] seed", d.get("seed", 0), 0),
    )


def _parse_scheduler(d: Any) -> SchedulerSpec:
    if not isinstance(d, dict):
        raise TypeError(f"[scheduler] must be a table, got {d!r}")
    kind = d.get("kind", "fifo")
    if kind not in SCHEDULER_KINDS:
        raise ValueError(f"[scheduler] kind: expected one of {list(SCHEDULER_KINDS)}, got {kind!r}")
    options = {k: v for k, v in d.items() if k != "kind"}
    if kind in SCHEDULER_OPTIONS:
        unknown = sorted(set(options) - set(SCHEDULER_OPTIONS[kind]))
        if unknown:
            raise ValueError(f"[scheduler] {unknown[0]}: unknown option of kind {kind!r}; known: "
                             f"{list(SCHEDULER_OPTIONS[kind])}")
    if kind == "asha":
        if "grace_period" in options:
            _as_int("[scheduler] grace_period", options["grace_period"], 1)
        rf = options.get("reduction_factor", 4)
        if isinstance(rf, bool) or not isinstance(rf, (int, float)) or not rf > 1:
            raise ValueError(f"[scheduler] reduction_factor: expected a number > 1, got {rf!r}")
    return SchedulerSpec(kind, options)


def _parse_study(d: Any, swept: list[str], trials: list[TrialPlan]) -> StudySpec:
    """``[study]``, checked against the swept keys and the planned trials (as the study command
    checks them, so that a spec that loads studies)."""
    _check_table("study", d, STUDY_KEYS)
    study = declared_study({"study": d})
    if not all(isinstance(t, str) for t in study.equivalent):
        raise TypeError(f"[study] equivalent: expected a string or a list of strings like "
                        f"'model=lipschitz:model.init_scale', got {d.get('equivalent')!r}")
    for text in study.equivalent:
        try:
            when, _ = parse_equivalence(text, swept)
        except ValueError as e:
            raise ValueError(f"[study] {e}") from None
        if when is not None and not any(_trial_value(t, when[0]) == when[1] for t in trials):
            raise ValueError(f"[study] equivalent {text!r}: no trial has {when[0]} = {when[1]}")
    if study.ood_key is not None:
        check_ood_key(study.ood_key, swept, "[study] ood_key")
    return study


def declared_study(raw: dict[str, Any]) -> StudySpec:
    """The ``[study]`` table of a spec as written (``sweep.json`` keeps it so), unchecked:
    ``equivalent`` as a tuple whether one string or a list was given."""
    d = raw.get("study") or {}
    eq = d.get("equivalent", [])
    eq = tuple(eq) if isinstance(eq, list) else (eq,)  # one string, or a bad value kept
    return StudySpec(eq, d.get("ood_key"))


def check_ood_key(key: Any, swept: Sequence[str], where: str = "ood_key") -> str:
    """``key`` if it is a swept key other than the seed (the key whose top range the study
    leaves out); else ValueError naming ``where``."""
    if not isinstance(key, str) or key not in swept or key == "seed":
        raise ValueError(f"{where}: expected a swept key but the seed "
                         f"({', '.join(k for k in swept if k != 'seed') or 'none'}), got {key!r}")
    return key


def parse_equivalence(text: str, swept: Sequence[str]) -> tuple[tuple[str, str] | None,
                                                                tuple[str, ...]]:
    """``"KEY=VALUE:K1[,K2]"`` -> ((KEY, VALUE), (K1, K2)): for the trials whose KEY is VALUE,
    the swept keys K1, K2 are ignored when forming groups; ``"K1[,K2]"``: for every trial.

    Raises:
        TypeError: ``text`` is not a string.
        ValueError: the text is malformed, or an ignored key is not swept.
    """
    if not isinstance(text, str):
        raise TypeError(f"equivalent must be a string like 'model=lipschitz:model.init_scale', "
                        f"got {type(text).__name__}")
    cond, _, keys = text.rpartition(":")
    when = None
    if cond:
        key, eq, value = cond.partition("=")
        if not eq or not key.strip() or not value.strip():
            raise ValueError(f"equivalent {text!r}: expected KEY=VALUE:IGNORED[,IGNORED], e.g. "
                             "'model=lipschitz:model.init_scale'")
        when = (key.strip(), value.strip())
    ignored = tuple(k.strip() for k in keys.split(",") if k.strip())
    if not ignored:
        raise ValueError(f"equivalent {text!r}: names no key to ignore")
    unknown = [k for k in ignored if k not in swept or k == "seed"]
    if unknown:
        raise ValueError(f"equivalent {text!r}: {', '.join(unknown)} is not a swept key (swept: "
                         f"{', '.join(k for k in swept if k != 'seed') or 'only the seed'})")
    return when, ignored


def _trial_value(trial: TrialPlan, key: str) -> str:
    """A trial's value of ``key`` as ``trials.csv`` writes it: swept, or its unit."""
    if key in trial.params:
        return str(trial.params[key])
    return trial.config.model if key == "model" else ""


def _parse_grids(d: Any) -> list[dict[str, list]]:
    """``[grid]`` (one table) or ``[[grid]]`` (an array of tables: the union of their
    products, e.g. flossing variants for some units only)."""
    if isinstance(d, list):
        if not d:
            raise ValueError("[[grid]]: the array is empty; give at least one table")
        return [_parse_grid(g) for g in d]
    return [_parse_grid(d)]


def _parse_grid(d: Any) -> dict[str, list]:
    if not isinstance(d, dict):
        raise TypeError(f"[grid] must be a table (or [[grid]] an array of tables), got {d!r}")
    grid = _flatten("grid", d)
    if not grid:
        raise ValueError("[grid]: the table is empty; list the values of at least one key")
    for key, values in grid.items():
        _check_key("grid", key)
        if not isinstance(values, list):
            raise TypeError(f"[grid] {key}: expected a list of values, got {values!r}")
        if not values:
            raise ValueError(f"[grid] {key}: the list is empty")
        for v in values:
            _check_value("grid", key, v)
    return grid


def _parse_sample(d: Any) -> tuple[int, int, dict[str, dict[str, Any]]]:
    if not isinstance(d, dict):
        raise TypeError(f"[sample] must be a table, got {d!r}")
    d = dict(d)
    if "n" not in d:
        raise ValueError("[sample] n: missing (the number of random points)")
    n = _as_int("[sample] n", d.pop("n"), 1)
    seed = _as_int("[sample] seed", d.pop("seed", 0), 0)
    dists = _flatten("sample", d)
    if not dists:
        raise ValueError("[sample]: no key to sample; give e.g. lr = { loguniform = [1e-4, 1e-2] }")
    for key, dist in dists.items():
        _check_key("sample", key)
        where = f"[sample] {key}"
        if not _is_distribution(dist):
            raise TypeError(f"{where}: expected a table with one of {list(DISTRIBUTIONS)}, "
                            f"e.g. {{ uniform = [0.1, 1.0] }}, got {dist!r}")
        kind = next(k for k in dist if k in DISTRIBUTIONS)
        arg = dist[kind]
        if not isinstance(arg, list):
            raise TypeError(f"{where}: {kind} takes a list, got {arg!r}")
        if kind == "choice":
            if "by_model" in dist:
                raise ValueError(f"{where}: by_model goes with uniform or loguniform, not choice")
            if not arg:
                raise ValueError(f"{where}: choice: the list is empty")
            for v in arg:
                _check_value("sample", key, v)
            continue
        _check_range(where, kind, arg)
        if "by_model" in dist:
            _check_by_model(where, kind, dist["by_model"])
        if "." not in key and not isinstance(_CONFIG_KEYS[key].default, float):
            raise TypeError(f"{where}: {kind} draws floats but {key} is "
                            f"{type(_CONFIG_KEYS[key].default).__name__}; use choice")
    return n, seed, dists


def _check_by_model(where: str, kind: str, by_model: Any) -> None:
    if not isinstance(by_model, dict) or not by_model:
        raise TypeError(f"{where}: by_model must be a table unit = [low, high], got {by_model!r}")
    for unit, rng in by_model.items():
        if unit not in MODELS:
            raise ValueError(f"{where}: by_model: unknown unit {unit!r}; known: {sorted(MODELS)}")
        _check_range(f"{where} by_model.{unit}", kind, rng)


def _draw(dists: dict[str, dict[str, Any]], n: int, seed: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    points: list[dict[str, Any]] = [{} for _ in range(n)]
    for key, dist in dists.items():  # key by key, so adding a key keeps the others' draws
        kind = next(k for k in dist if k in DISTRIBUTIONS)
        arg = dist[kind]
        for p in points:
            if "by_model" in dist:
                p[key] = _Quantile(
                    float(rng.random()), kind, (float(arg[0]), float(arg[1])),
                    tuple((m, (float(r[0]), float(r[1]))) for m, r in dist["by_model"].items()),
                )
            elif kind == "choice":
                p[key] = arg[int(rng.integers(len(arg)))]
            elif kind == "uniform":
                p[key] = float(rng.uniform(arg[0], arg[1]))
            else:
                p[key] = float(math.exp(rng.uniform(math.log(arg[0]), math.log(arg[1]))))
    return points


def _per_unit(params: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """Draws with per-unit ranges become values for the trial's unit (``model``, swept or
    the spec's own; a preset's unit when neither names one)."""
    if not any(isinstance(v, _Quantile) for v in params.values()):
        return params
    model = params.get("model", base.get("model"))
    if model is None and "preset" in base:
        model = resolve_config(preset=base["preset"]).model
    return {k: v.value(model) if isinstance(v, _Quantile) else v for k, v in params.items()}


def _config_key(params: dict[str, Any]) -> str:
    return json.dumps({k: v for k, v in params.items() if k != "seed"}, sort_keys=True)


def _resolve(base: dict[str, Any], overrides: dict[str, Any], where: str) -> TrainConfig:
    try:
        cfg = resolve_config(
            preset=base.get("preset"), task=base.get("task"), model=base.get("model"),
            overrides=overrides,
        )
    except (ValueError, TypeError, FileNotFoundError) as e:
        raise type(e)(f"{where}: {e}") from None
    if cfg.task not in TASKS:
        raise ValueError(f"{where}: task must be one of {sorted(TASKS)}, got {cfg.task!r}")
    if cfg.model not in MODELS:
        raise ValueError(f"{where}: model must be one of {sorted(MODELS)}, got {cfg.model!r}")
    return cfg


def load_spec(spec: str | Path | dict[str, Any]) -> SweepSpec:
    """Parse and check a sweep specification (a TOML file's path, or its content as a dict).

    Every trial's configuration is resolved here, so a spec that loads runs; ValueError or
    TypeError name the table and key of any problem.
    """
    if isinstance(spec, dict):
        raw = json.loads(json.dumps(spec))  # a private copy with plain types
    else:
        path = Path(spec)
        if not path.is_file():
            raise FileNotFoundError(f"sweep spec: no such file {path}")
        try:
            raw = tomllib.loads(path.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"sweep spec: {path} is not valid TOML: {e}") from None
    unknown = sorted(set(raw) - set(TOP_KEYS))
    if unknown:
        raise ValueError(f"sweep spec: unknown key {unknown[0]!r}; known: {list(TOP_KEYS)}")
    base = {k: raw[k] for k in ("preset", "task", "model", "description") if k in raw}
    for k, v in base.items():
        if not isinstance(v, str):
            raise TypeError(f"sweep spec: {k} must be a string, got {v!r}")
    if "preset" not in base and "task" not in base:
        raise ValueError("sweep spec: give preset = \"...\" or task = \"...\" (and model)")
    fixed_raw = raw.get("set", {})
    if not isinstance(fixed_raw, dict):
        raise TypeError(f"[set] must be a table, got {fixed_raw!r}")
    fixed = _flatten("set", fixed_raw)
    for key, value in fixed.items():
        _check_key("set", key)
        _check_value("set", key, value)
    grids = _parse_grids(raw["grid"]) if "grid" in raw else []
    grid = {k: [v for g in grids for v in g.get(k, [])] for g in grids for k in g}
    n, sample_seed, dists = _parse_sample(raw["sample"]) if "sample" in raw else (1, 0, {})
    if not grid and not dists:
        raise ValueError("sweep spec: nothing to sweep; give [grid] and/or [sample]")
    for table, keys in (("grid", grid), ("sample", dists)):
        for key in keys:
            if key in fixed:
                raise ValueError(f"[{table}] {key}: also in [set]; give it in one table")
            if key == "task" or key.startswith("task.") or key.endswith("_kwargs"):
                raise ValueError(
                    f"[{table}] {key}: cannot be swept (every trial shares the task and the "
                    "probe input; set model options one by one as model.NAME)"
                )
    both = sorted(set(grid) & set(dists))
    if both:
        raise ValueError(f"[sample] {both[0]}: also in [grid]; give it in one table")
    lyap = _parse_lyapunov(raw.get("lyapunov", {}))
    sched = _parse_scheduler(raw.get("scheduler", {}))

    combos = [dict(zip(g, vals, strict=True)) for g in grids
              for vals in itertools.product(*g.values())] or [{}]
    points = _draw(dists, n, sample_seed) if dists else [{}]
    params_list = [_per_unit({**c, **p}, base) for c in combos for p in points]
    width = max(3, len(str(len(params_list) - 1)))
    config_ids: dict[str, str] = {}
    trials = []
    for i, params in enumerate(params_list):
        tid = f"t{i:0{width}d}"
        cfg = _resolve(base, {**fixed, **params}, f"trial {tid} {params}")
        if lyap.at_epochs and lyap.at_epochs[-1] > cfg.epochs:
            raise ValueError(
                f"[lyapunov] at_epochs: epoch {lyap.at_epochs[-1]} is beyond epochs="
                f"{cfg.epochs} (trial {tid} {params})"
            )
        cid = config_ids.setdefault(_config_key(params), f"c{len(config_ids):0{width}d}")
        trials.append(TrialPlan(tid, params, cid, cfg))
    if len({t.config.task for t in trials}) > 1:  # pragma: no cover - task is never swept
        raise ValueError("sweep spec: every trial must train the same task")
    study = _parse_study(raw.get("study", {}), list(grid) + list(dists), trials)
    return SweepSpec(raw, base, fixed, grid, n if dists else 0, sample_seed, dists, lyap, sched,
                     trials, grids, study)
