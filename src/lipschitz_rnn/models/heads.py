"""A recurrent layer plus a linear readout, for classification, regression and language models."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pad_packed_sequence

__all__ = ["SequenceModel"]


class SequenceModel(nn.Module):
    """``rnn`` followed by ``Linear(hidden * num_directions, output_size)``.

    Args:
        rnn: any layer with torch.nn.RNN's interface (this package's or torch's own).
        output_size: readout features (classes, regression targets or vocabulary).
        mode: ``"last"`` reads out the last time step (sequence classification; for a
            PackedSequence, each sequence's own last step); ``"all"`` reads out every step
            (regression and language modelling).
        vocab_size: when given, inputs are integer tokens (T, B) embedded by
            ``nn.Embedding(vocab_size, rnn.input_size)`` first.

    ``forward(x, hx=None, return_state=False)``: returns the readout -- (B, output_size) for
    ``"last"``, or shaped like the rnn's output with ``output_size`` features for ``"all"``
    (a PackedSequence stays packed) -- and with ``return_state=True`` also ``h_n``, to carry the
    state across truncated-BPTT segments.
    """

    def __init__(
        self, rnn: nn.Module, output_size: int, mode: str = "last", vocab_size: int | None = None
    ):
        super().__init__()
        if mode not in ("last", "all"):
            raise ValueError(f"mode must be 'last' or 'all', got {mode!r}")
        if isinstance(output_size, bool) or not isinstance(output_size, int) or output_size <= 0:
            raise ValueError(f"output_size must be a positive int, got {output_size!r}")
        self.rnn = rnn
        self.mode = mode
        self.output_size = output_size
        self.embedding = nn.Embedding(vocab_size, rnn.input_size) if vocab_size else None
        width = rnn.hidden_size * (2 if getattr(rnn, "bidirectional", False) else 1)
        p = next(rnn.parameters())
        self.readout = nn.Linear(width, output_size, device=p.device, dtype=p.dtype)

    @property
    def batch_first(self) -> bool:
        return bool(getattr(self.rnn, "batch_first", False))

    def forward(self, x, hx=None, return_state: bool = False):
        if self.embedding is not None:
            if isinstance(x, PackedSequence):
                x = x._replace(data=self.embedding(x.data))
            else:
                x = self.embedding(x)
        out, h_n = self.rnn(x, hx)
        if self.mode == "all":
            if isinstance(out, PackedSequence):
                y = out._replace(data=self.readout(out.data))
            else:
                y = self.readout(out)
        else:
            y = self.readout(self._last(out))
        return (y, h_n) if return_state else y

    def _last(self, out) -> Tensor:
        if isinstance(out, PackedSequence):
            padded, lengths = pad_packed_sequence(out)  # (T, B, F), original batch order
            idx = (lengths - 1).to(padded.device)
            return padded[idx, torch.arange(padded.shape[1], device=padded.device)]
        if out.dim() == 2:  # unbatched (T, F)
            return out[-1]
        return out[:, -1] if self.batch_first else out[-1]
