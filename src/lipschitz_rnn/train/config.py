"""Training configuration: a dataclass, TOML presets shipped in the package, ``--set`` overrides."""

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

__all__ = ["TrainConfig", "list_presets", "load_preset", "resolve_config", "parse_set"]


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
        if self.optimizer not in ("adam", "sgd"):
            raise ValueError(f"optimizer must be 'adam' or 'sgd', got {self.optimizer!r}")
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
    bare word is taken as a string. ``model.x`` and ``task.x`` address ``model_kwargs``/``task_kwargs``."""
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
            if head not in ("model", "task"):
                raise ValueError(f"--set: unknown table {head!r} in {key!r}; use model.* or task.*")
            d[f"{head}_kwargs"][rest] = value
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
