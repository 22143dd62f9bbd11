"""What defines a run: :class:`TrainConfig` (``config.toml``), the TOML presets shipped in the
package, ``--set`` overrides, and which settings a resume may change."""

from __future__ import annotations

import copy
import dataclasses
import sys
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

import tomli_w

from .._checks import check_float

__all__ = ["TrainConfig", "FlossingConfig", "list_presets", "load_preset", "resolve_config", "parse_set",
           "RESUMABLE_KEYS", "apply_resume_overrides", "config_differences",
           "resume_overrides_from"]


#: which parameters a phase changes: the recurrent layer's (recurrent and input weights,
#: biases), or every parameter of the model (readout and embedding included)
PARAM_SETS = ("recurrent", "all")


@dataclass
class FlossingConfig:
    """The ``[flossing]`` table of a run configuration (all off by default).

    ``k`` exponents (0: all of the state) are pushed toward ``target`` on ``batch`` sequences of
    ``warmup + steps`` time steps (``warmup`` transient steps not averaged, ``steps`` averaged);
    ``before`` steps before training; ``during`` steps at the start of every ``every``-th epoch
    (epochs ``every + 1``, ``2 every + 1``, ...: the phase before training covers the first);
    Adam at ``lr`` with gradient-norm clipping at ``clip_grad_norm`` (0: none) on ``params``
    (``"recurrent"``: the recurrent layer; ``"all"``: every parameter).
    """

    k: int = 0
    target: float = 0.0
    warmup: int = 16
    steps: int = 55
    batch: int = 16
    before: int = 0
    every: int = 0
    during: int = 0
    lr: float = 1e-3
    clip_grad_norm: float = 0.0
    params: str = "recurrent"

    @property
    def enabled(self) -> bool:
        return self.before > 0 or (self.every > 0 and self.during > 0)

    def validate(self) -> FlossingConfig:
        """Check every key (ValueError / TypeError naming ``flossing.KEY``); returns self."""
        for name, low in (("k", 0), ("warmup", 0), ("steps", 1), ("batch", 1), ("before", 0),
                          ("every", 0), ("during", 0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"flossing.{name} must be an int, got {v!r}")
            if v < low:
                raise ValueError(f"flossing.{name} must be >= {low}, got {v}")
        self.target = check_float("flossing.target", self.target)
        self.lr = check_float("flossing.lr", self.lr, gt=0)
        self.clip_grad_norm = check_float("flossing.clip_grad_norm", self.clip_grad_norm, ge=0)
        if self.params not in PARAM_SETS:
            raise ValueError(f"flossing.params must be one of {list(PARAM_SETS)}, got "
                             f"{self.params!r}")
        if (self.every > 0) != (self.during > 0):
            raise ValueError(
                f"flossing.every and flossing.during go together (a phase every `every` epochs "
                f"of `during` steps), got every={self.every}, during={self.during}"
            )
        return self

    def check_against(self, state_size: int, sequence_length: int | None) -> None:
        """The checks that need the model and the task: ``k`` within the state, sequences
        long enough for ``warmup + steps``."""
        if self.k > state_size:
            raise ValueError(f"flossing.k={self.k} is larger than the model's state size "
                             f"{state_size}")
        if sequence_length is not None and self.warmup + self.steps > sequence_length:
            raise ValueError(
                f"flossing.warmup + flossing.steps = {self.warmup + self.steps} exceeds the "
                f"task's {sequence_length} time steps"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FlossingConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown flossing keys {unknown}; known: {sorted(known)}")
        return cls(**d).validate()


@dataclass
class TrainConfig:
    """Everything that defines a run. Serialised as ``config.toml`` in the run directory.

    ``model_kwargs`` pass to :func:`lipschitz_rnn.models.build` (e.g. ``solver``, ``eps``);
    ``task_kwargs`` to :func:`lipschitz_rnn.data.get_task` (e.g. ``length``). ``lr_decay_epochs``
    multiplies the learning rate by ``lr_decay_factor`` at each listed epoch (1-based: the paper's
    "x0.1 at epoch 90" is ``[90]``). ``clip_grad_norm = 0`` disables clipping; ``max_batches = 0``
    uses every batch. ``test_every = E > 0`` also evaluates the test set after every E-th epoch
    and logs it in ``metrics.jsonl`` (a learning curve for comparison with published per-epoch
    test curves; the model is still selected on validation only). ``tensorboard = true``: the
    ``train`` command also logs to ``RUN/tb/`` (:mod:`lipschitz_rnn.train.tensorboard`).
    ``flossing``: the ``[flossing]`` table (:class:`FlossingConfig`; off by default).
    """

    task: str = "digits"
    model: str = "lipschitz"
    description: str = ""
    seed: int = 0
    device: str = "auto"
    hidden_size: int = 128
    num_layers: int = 1
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    task_kwargs: dict[str, Any] = field(default_factory=dict)
    epochs: int = 10
    batch_size: int = 128
    eval_batch_size: int = 512
    optimizer: str = "adam"
    lr: float = 0.003
    momentum: float = 0.9
    weight_decay: float = 0.0
    lr_decay_epochs: list[int] = field(default_factory=list)
    lr_decay_factor: float = 0.1
    clip_grad_norm: float = 0.0
    bptt: int = 150
    max_batches: int = 0
    lyapunov_every: int = 0
    lyapunov_batch: int = 8
    lyapunov_k: int = 0
    test_every: int = 0
    tensorboard: bool = False
    flossing: FlossingConfig = field(default_factory=FlossingConfig)

    def validate(self) -> TrainConfig:
        def pos_int(name: str, allow_zero: bool = False) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < (0 if allow_zero else 1):
                raise ValueError(f"{name} must be an int >= {0 if allow_zero else 1}, got {v!r}")

        for n in (
            "hidden_size",
            "num_layers",
            "epochs",
            "batch_size",
            "eval_batch_size",
            "bptt",
            "lyapunov_batch",
        ):
            pos_int(n)
        for n in ("max_batches", "lyapunov_every", "lyapunov_k", "test_every", "seed"):
            pos_int(n, allow_zero=True)
        for n in ("momentum", "weight_decay", "lr_decay_factor", "clip_grad_norm"):
            setattr(self, n, check_float(n, getattr(self, n), ge=0))
        self.lr = check_float("lr", self.lr, gt=0)
        if not isinstance(self.tensorboard, bool):
            raise ValueError(f"tensorboard must be true or false, got {self.tensorboard!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {list(OPTIMIZERS)}, got "
                             f"{self.optimizer!r}")
        if not isinstance(self.lr_decay_epochs, list) or not all(
            isinstance(e, int) and e >= 1 for e in self.lr_decay_epochs
        ):
            raise ValueError(
                f"lr_decay_epochs must be a list of ints >= 1, got {self.lr_decay_epochs!r}"
            )
        for n in ("model_kwargs", "task_kwargs"):
            if not isinstance(getattr(self, n), dict):
                raise ValueError(f"{n} must be a table, got {getattr(self, n)!r}")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {self.device!r}")
        if isinstance(self.flossing, dict):
            self.flossing = FlossingConfig.from_dict(self.flossing)
        elif isinstance(self.flossing, FlossingConfig):
            self.flossing.validate()
        else:
            raise TypeError(f"flossing must be a table, got {self.flossing!r}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_toml(self) -> str:
        d = self.to_dict()
        return tomli_w.dumps(d)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown configuration keys {unknown}; known: {sorted(known)}")
        return cls(**d).validate()

    @classmethod
    def from_toml(cls, text: str) -> TrainConfig:
        return cls.from_dict(tomllib.loads(text))


def _preset_files() -> dict[str, Any]:
    root = resources.files("lipschitz_rnn") / "presets"
    return {p.name[: -len(".toml")]: p for p in root.iterdir() if p.name.endswith(".toml")}


def list_presets() -> dict[str, str]:
    """Preset name -> one-line description."""
    out = {}
    for name, p in sorted(_preset_files().items()):
        out[name] = tomllib.loads(p.read_text()).get("description", "")
    return out


def load_preset(name: str) -> dict[str, Any]:
    """The settings of the shipped preset ``name``, or of a TOML file when ``name`` is a path
    (ends in ``.toml`` or names an existing file): users keep their own presets."""
    files = _preset_files()
    if name in files:
        return tomllib.loads(files[name].read_text())
    path = Path(name).expanduser()
    if name.endswith(".toml") or path.is_file():
        if not path.is_file():
            raise FileNotFoundError(f"preset: no such file {path}")
        try:
            return tomllib.loads(path.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"preset: {path} is not valid TOML: {e}") from None
    raise ValueError(
        f"preset must be one of {sorted(files)} or the path of a TOML file, got {name!r}"
    )


def parse_set(items: list[str]) -> dict[str, Any]:
    """Parse ``key=value`` overrides. Values are TOML (``0.1``, ``[90]``, ``true``, ``"rk2"``); a
    bare word is taken as a string. ``model.x``, ``task.x`` and ``flossing.x`` address
    ``model_kwargs``, ``task_kwargs`` and the ``[flossing]`` table."""
    out: dict[str, Any] = {}
    for item in items:
        if not isinstance(item, str) or "=" not in item:
            raise ValueError(f"--set expects key=value, got {item!r}")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key or not all(part.isidentifier() for part in key.split(".")):
            raise ValueError(f"--set: malformed key {key!r} in {item!r}")
        try:
            value = tomllib.loads(f"v = {raw.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            if raw.strip() and all(c.isalnum() or c in "-_." for c in raw.strip()):
                value = raw.strip()
            else:
                raise ValueError(f"--set: malformed value {raw!r} for {key!r}") from None
        out[key] = value
    return out


#: ``optimizer`` values: Adam (L2 ``weight_decay`` in the gradient), AdamW (decoupled weight
#: decay), SGD with ``momentum``
OPTIMIZERS = ("adam", "adamw", "sgd")

#: the tables that ``--set TABLE.KEY=...`` addresses, and their fields in :class:`TrainConfig`
_TABLES = {"model": "model_kwargs", "task": "task_kwargs", "flossing": "flossing"}


def resolve_config(
    *,
    task: str | None = None,
    model: str | None = None,
    preset: str | None = None,
    overrides: dict[str, Any] | None = None,
    base: dict[str, Any] | None = None,
) -> TrainConfig:
    """Defaults (or ``base``, a configuration dict), then the preset (if any), then
    ``task``/``model`` given explicitly, then ``overrides`` (``--set`` keys)."""
    d: dict[str, Any] = TrainConfig().to_dict() if base is None else copy.deepcopy(base)
    if preset is not None:
        p = load_preset(preset)
        for k in ("model_kwargs", "task_kwargs"):
            d[k] = dict(p.pop(k, {}))
        d.update(p)
    if task is not None:
        if preset is not None and d["task"] != task:
            raise ValueError(f"task {task!r} conflicts with preset {preset!r} (task {d['task']!r})")
        d["task"] = task
    if model is not None:
        if preset is not None and d["model"] != model:
            raise ValueError(
                f"model {model!r} conflicts with preset {preset!r} (model {d['model']!r})"
            )
        d["model"] = model
    known = {f.name for f in fields(TrainConfig)}
    for key, value in (overrides or {}).items():
        head, _, rest = key.partition(".")
        if rest:
            if head not in _TABLES:
                raise ValueError(f"--set: unknown table {head!r} in {key!r}; use model.*, task.* "
                                 "or flossing.*")
            d.setdefault(_TABLES[head], {})[rest] = value
        elif key in known:
            default = getattr(TrainConfig(), key)
            if (
                isinstance(default, float)
                and isinstance(value, int)
                and not isinstance(value, bool)
            ):
                value = float(value)
            if type(default) is not type(value) and default is not None:
                raise ValueError(f"--set {key}: expected {type(default).__name__}, got {value!r}")
            d[key] = value
        else:
            raise ValueError(f"--set: unknown key {key!r}; known: {sorted(known)}")
    return TrainConfig.from_dict(d)


# --- resume: which settings may change --------------------------------------------------------
#: settings that may change when a run is resumed: the length, the learning-rate schedule and
#: what is monitored; everything else defines the run and is refused
RESUMABLE_KEYS = (
    "epochs",
    "lr",
    "lr_decay_epochs",
    "lr_decay_factor",
    "test_every",
    "eval_batch_size",
    "lyapunov_every",
    "lyapunov_batch",
    "lyapunov_k",
)

#: settings that neither define a run nor change it: a resume ignores their differences
#: (``tensorboard``: ``train --tensorboard`` turns the logging on for a session)
_NOT_COMPARED = ("description", "tensorboard")


def apply_resume_overrides(
    config: TrainConfig, overrides: dict[str, Any] | None
) -> tuple[TrainConfig, dict[str, list]]:
    """``config`` with ``overrides`` (``--set`` keys) applied on resume, and the changes as
    ``{key: [old, new]}``. Keys outside :data:`RESUMABLE_KEYS` raise ValueError naming them."""
    if not overrides:
        return config, {}
    refused = sorted(k for k in overrides if k not in RESUMABLE_KEYS)
    if refused:
        raise ValueError(
            f"--resume cannot change {refused}: they define the run. Settings that may change "
            f"on resume: {list(RESUMABLE_KEYS)}; start a new run (--out) for the others"
        )
    new = resolve_config(preset=None, base=config.to_dict(), overrides=overrides)
    changes = {
        k: [getattr(config, k), getattr(new, k)]
        for k in overrides
        if getattr(config, k) != getattr(new, k)
    }
    return new, changes


def _flat(config: TrainConfig) -> dict[str, Any]:
    out: dict[str, Any] = {}
    tables = {field: head for head, field in _TABLES.items()}
    for k, v in config.to_dict().items():
        if k in tables:
            out.update({f"{tables[k]}.{kk}": vv for kk, vv in v.items()})
        elif k not in _NOT_COMPARED:
            out[k] = v
    return out


def config_differences(run: TrainConfig, given: TrainConfig) -> dict[str, tuple[Any, Any]]:
    """``{key: (run's value, given value)}`` for every setting in which ``given`` differs from
    ``run`` (``model.x``/``task.x`` for the model's and task's options; a missing option shows
    as None). ``description`` and ``tensorboard`` are not compared."""
    a, b = _flat(run), _flat(given)
    keys = dict.fromkeys([*a, *b])
    return {k: (a.get(k), b.get(k)) for k in keys if a.get(k) != b.get(k)}


def resume_overrides_from(out: Path, run: TrainConfig, given: TrainConfig) -> dict[str, Any]:
    """The overrides that turn the run's configuration ``run`` into ``given`` (a resume that
    repeats the command that started the run): differences in :data:`RESUMABLE_KEYS` are
    applied; any other difference raises ValueError naming each setting and both values."""
    diff = config_differences(run, given)
    refused = {k: v for k, v in diff.items() if k not in RESUMABLE_KEYS}
    if refused:
        listed = "; ".join(f"{k}: {a!r} in the run, {b!r} now" for k, (a, b) in refused.items())
        raise ValueError(
            f"--resume: the run in {out} was started with another configuration ({listed}). "
            "These settings define the run: resume with the settings it was started with, or "
            "start a new run (another --out, or --force to overwrite it)"
        )
    return {k: b for k, (_, b) in diff.items()}
