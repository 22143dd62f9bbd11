"""The :class:`Task` a loader returns, and the batching of token streams for language models.

:func:`batchify` cuts a token stream into ``B`` contiguous parallel streams, an ``(N, B)`` tensor
whose column ``b`` is tokens ``[b N, (b + 1) N)`` (the last ``len % B`` tokens are dropped);
:func:`bptt_segments` then yields consecutive ``(input (L, B), target (L, B))`` windows with
``target = input`` shifted by one step, where window ``k + 1`` starts exactly where window ``k``
ended, so a hidden state carried across windows sees each stream in order.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .._checks import check_choice, check_int

__all__ = ["Task", "batchify", "bptt_segments", "DEFAULT_BPTT"]

DEFAULT_BPTT = 150


def batchify(stream: torch.Tensor, batch_size: int) -> torch.Tensor:
    """``(N, B)``: ``stream`` cut into ``B`` contiguous parallel streams (column ``b`` = part ``b``)."""
    batch_size = check_int("batch_size", batch_size, ge=1)
    stream = torch.as_tensor(stream, dtype=torch.long).reshape(-1)
    n = stream.numel() // batch_size
    if n < 2:
        raise ValueError(
            f"batch_size={batch_size} is too large for a stream of {stream.numel()} tokens "
            "(each parallel stream needs at least 2 tokens)"
        )
    return stream[: n * batch_size].view(batch_size, n).t().contiguous()


def bptt_segments(data: torch.Tensor, bptt: int = DEFAULT_BPTT) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Consecutive ``(input, target)`` windows of a batchified ``(N, B)`` tensor.

    ``input = data[s : s + L]``, ``target = data[s + 1 : s + L + 1]`` with ``s = k * bptt``;
    the last window may be shorter. Window ``k + 1``'s input starts where window ``k``'s ended.
    """
    bptt = check_int("bptt", bptt, ge=1)
    for start in range(0, data.shape[0] - 1, bptt):
        end = min(start + bptt, data.shape[0] - 1)
        yield data[start:end], data[start + 1 : end + 1]



@dataclass
class Task:
    """A task: its datasets and what the model and loop need to know about it.

    ``kind``: ``classification`` | ``regression`` | ``language_model``. ``readout``: ``last``
    (one prediction per sequence from the last step) or ``all`` (a prediction at every step).
    ``metric``: ``accuracy`` | ``mse`` | ``bpc``. ``train``/``valid``/``test`` are
    ``torch.utils.data.Dataset`` objects returning ``(x, y)`` with ``x`` of shape
    ``(T, input_size)`` float32, except for ``language_model`` where they are 1-D ``int64`` token
    streams (use :meth:`batchify`). ``collate_fn`` (speech) turns a list of items into a padded
    batch. ``meta`` is JSON/TOML-serialisable (lists, numbers, strings).
    """

    name: str
    kind: str
    input_size: int
    output_size: int
    readout: str
    metric: str
    train: Any = field(repr=False)
    valid: Any = field(repr=False)
    test: Any = field(repr=False)
    collate_fn: Callable[[list], Any] | None = field(default=None, repr=False)
    meta: dict[str, Any] = field(default_factory=dict, repr=False)
    description: str = ""

    def meta_to_save(self) -> dict[str, Any]:
        """A deep copy of ``meta`` (what a run should store to reproduce the data)."""
        return _plain(self.meta)

    def split(self, name: str):
        """The dataset (or token stream) of split ``name`` (train, valid or test)."""
        check_choice("split", name, ("train", "valid", "test"))
        return getattr(self, name)

    def batchify(self, split: str, batch_size: int) -> torch.Tensor:
        """Language models: split ``split``'s stream into ``batch_size`` parallel streams, (N, B)."""
        if self.kind != "language_model":
            raise ValueError(f"batchify is for language-model tasks; task {self.name!r} is {self.kind}")
        return batchify(self.split(split), batch_size)

    def rng_state(self) -> dict[str, torch.Tensor]:
        """States of the datasets' own random generators (npcifar noise), for checkpoints."""
        out = {}
        for s in ("train", "valid", "test"):
            g = getattr(getattr(self, s), "generator", None)
            if isinstance(g, torch.Generator):
                out[s] = g.get_state()
        return out

    def set_rng_state(self, state: dict[str, torch.Tensor]) -> None:
        for s, st in state.items():
            getattr(self, s).generator.set_state(st)


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, (np.ndarray, torch.Tensor)):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if dataclasses.is_dataclass(obj):
        return _plain(dataclasses.asdict(obj))
    return obj
