"""Shared machinery: a one-step cell contract and a layer with torch.nn.RNN's calling convention.

Conventions. Maths in docstrings is column-vector (``h' = A h + ...``); code works on row-major
batches, so ``A h`` is written ``h @ A.T``. A cell's *state* is one flat tensor of size
``state_size`` per sequence; cells with two state components (coRNN: position and velocity)
concatenate them, and their first ``hidden_size`` entries are the output.

A cell splits one step into three pieces so that a layer can hoist work out of the time loop:

* ``input_projection(x)`` -> ``u``: everything that depends on the input only, for all time steps
  at once (one matmul over ``(T, B, input_size)``);
* ``recurrence()`` -> ``ctx``: tensors built from the parameters once per forward (e.g. ``A``,
  ``W`` of the Lipschitz cell);
* ``step(h, u_t, ctx)`` -> ``h_next``: the recurrent update.

Analysis code (Lyapunov exponents, certificates) uses the same three pieces.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from .._checks import check_float, check_int

__all__ = ["RecurrentCell", "RecurrentLayer", "autocast_active"]


def autocast_active(device_type: str) -> bool:
    """Whether autocast is on for ``device_type`` (``"cpu"``, ``"cuda"``, ...)."""
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # pragma: no cover - torch without the device_type argument
        return torch.is_autocast_enabled() if device_type == "cuda" else False


def _refuse_torchscript(module: nn.Module):
    raise RuntimeError(
        f"{type(module).__name__} cannot be compiled by torch.jit.script: TorchScript cannot "
        "represent its forward (a PackedSequence-or-Tensor input, per-unit cells, and on the "
        "Lipschitz layer a custom autograd Function with native kernels). Use "
        "torch.compile(model) to compile it, or torch.export.export(model, (x,)) for a graph "
        "(the time loop is unrolled, so the sequence length is fixed)."
    )


class RecurrentCell(nn.Module):
    """Base class of one-step cells. Subclasses set ``num_states`` and implement the three pieces."""

    num_states: int = 1

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.input_size = check_int("input_size", input_size, ge=1)
        self.hidden_size = check_int("hidden_size", hidden_size, ge=1)

    @property
    def state_size(self) -> int:
        return self.num_states * self.hidden_size

    def __prepare_scriptable__(self):
        """torch.jit.script calls this first: refuse with a clear message (see RecurrentLayer)."""
        _refuse_torchscript(self)

    # --- the three pieces -------------------------------------------------------------------
    def input_projection(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def recurrence(self) -> tuple[Tensor, ...]:  # pragma: no cover - abstract
        raise NotImplementedError

    def step(self, h: Tensor, u: Tensor, ctx: tuple[Tensor, ...]) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    # --- sequences ----------------------------------------------------------------------------
    def scan(
        self,
        u: Tensor,
        h0: Tensor,
        ctx: tuple[Tensor, ...],
        batch_sizes: Tensor | None = None,
        reverse: bool = False,
    ) -> tuple[Tensor, Tensor]:
        """Run ``step`` over projected inputs; return (all states, last state).

        Dense: ``u`` is (T, B, ·) and the states are (T, B, state_size). Packed: ``u`` is the
        packed data (N, ·) with ``batch_sizes`` (sorted by decreasing length, as PackedSequence),
        and at step t only the first ``batch_sizes[t]`` sequences advance; the others keep their
        state. ``reverse`` runs time backwards (for bidirectional layers), which with packed data
        starts every sequence at its own last element.
        """
        if batch_sizes is None:
            T = u.shape[0]
            order = range(T - 1, -1, -1) if reverse else range(T)
            h = h0
            out: list[Tensor] = [h0] * T
            # unbind/split once: indexing u[t] per step would make autograd materialise a
            # full-size zero gradient of u at every step
            u_steps = u.unbind(0)
            for t in order:
                h = self.step(h, u_steps[t], ctx)
                out[t] = h
            return torch.stack(out, 0), h
        sizes = batch_sizes.tolist()
        u_steps = u.split(sizes, 0)
        order = range(len(sizes) - 1, -1, -1) if reverse else range(len(sizes))
        h = h0
        chunks: list[Tensor] = [h0[:0]] * len(sizes)
        for t in order:
            b = sizes[t]
            h_new = self.step(h[:b], u_steps[t], ctx)
            h = torch.cat([h_new, h[b:]], 0) if b < h.shape[0] else h_new
            chunks[t] = h_new
        return torch.cat(chunks, 0), h

    # --- one step, torch.nn.RNNCell style -----------------------------------------------------
    def forward(self, input: Tensor, hx: Tensor | tuple[Tensor, ...] | None = None):
        """One step. ``input`` is (batch, input_size) or unbatched (input_size,).

        Returns the next hidden state, shaped like ``hx``; cells with two states take and return
        a tuple of two tensors.
        """
        if input.dim() not in (1, 2):
            raise ValueError(
                f"input must be 1-D (input_size,) or 2-D (batch, input_size), got shape "
                f"{tuple(input.shape)}"
            )
        if input.shape[-1] != self.input_size:
            raise ValueError(
                f"input.size(-1) must equal input_size={self.input_size}, got {input.shape[-1]}"
            )
        batched = input.dim() == 2
        x = input if batched else input.unsqueeze(0)
        h = self._flat_state(hx, x.shape[0], batched, x)
        h_next = self.step(h, self.input_projection(x), self.recurrence())
        if not batched:
            h_next = h_next.squeeze(0)
        return self._split_state(h_next)

    def _flat_state(self, hx, batch: int, batched: bool, like: Tensor) -> Tensor:
        expected = (batch, self.hidden_size) if batched else (self.hidden_size,)
        if hx is None:
            return like.new_zeros(batch, self.state_size)
        parts = hx if isinstance(hx, (tuple, list)) else (hx,)
        if len(parts) != self.num_states:
            raise ValueError(
                f"hx must be {'a tensor' if self.num_states == 1 else f'a tuple of {self.num_states} tensors'}"
                f" of shape {expected}"
            )
        for p in parts:
            if not isinstance(p, Tensor) or tuple(p.shape) != expected:
                got = tuple(p.shape) if isinstance(p, Tensor) else type(p).__name__
                raise ValueError(f"hx must have shape {expected}, got {got}")
        h = torch.cat(parts, -1)
        return h if batched else h.unsqueeze(0)

    def _split_state(self, h: Tensor):
        if self.num_states == 1:
            return h
        return tuple(h.split(self.hidden_size, -1))


class RecurrentLayer(nn.Module):
    """A stack of cells with exactly torch.nn.RNN's calling convention.

    ``forward(input, hx=None) -> (output, h_n)`` where ``input`` is (T, B, input_size), or
    (B, T, input_size) with ``batch_first``, or unbatched (T, input_size), or a PackedSequence;
    ``output`` has ``hidden_size * num_directions`` features and ``h_n`` is
    (num_layers * num_directions, B, hidden_size). Cells with two state components take and
    return ``hx``/``h_n`` as a tuple of two such tensors, like torch.nn.LSTM.

    ``cells`` holds the cells in torch's order: layer 0 forward, layer 0 reverse, layer 1 forward,
    ... (``cells[l * num_directions + d]``).

    The rest of torch.nn.RNN's surface:

    * ``flatten_parameters()`` is a no-op and ``all_weights[l * D + d]`` lists cell ``l * D +
      d``'s parameters (see their docstrings).
    * ``state_dict`` keys are ``cells.{i}.<name>`` with ``i = l * D + d``, where nn.RNN has
      ``<name>_l{l}`` (``_reverse`` appended for ``d = 1``). Input map: ``cells.{i}.weight_ih``
      and ``cells.{i}.bias_ih`` are nn.RNN's ``weight_ih_l{l}`` and ``bias_ih_l{l}`` (same shape,
      same role), in every unit but ExpRNN (no input bias). Recurrent part, per unit (there is
      no ``bias_hh``: nn.RNN's two biases only ever appear as their sum ``b_ih + b_hh``)::

          nn.RNN            weight_hh_l{l}   (H, H)    h' = tanh(W_ih x + b_ih + W_hh h + b_hh)
          LipschitzRNN      cells.{i}.M_A, cells.{i}.M_W (H, H): A = S(M_A), W = S(M_W)
          ODERNN            cells.{i}.weight_hh (H, H): W, unconstrained
          AntisymmetricRNN  cells.{i}.weight_hh (H, H) [(2H, H) gated]: W - W^T - gamma I
          CoRNN             cells.{i}.weight_hh (H, 2H): [W | W_z]
          ExpRNN            cells.{i}.log_hh (H, H): Q = expm(S - S^T); cells.{i}.bias_mod
                            (modReLU bias, H) in place of bias_ih

    * autocast: the layer runs in its parameters' dtype with autocast disabled inside and
      returns that dtype (float32 under ``torch.autocast("cpu", torch.bfloat16)``, where nn.RNN
      returns bfloat16); lower-precision inputs are cast up. The units integrate an ODE with
      small steps (``h + eps * f``, ``eps`` ~ 0.01-0.04): in bfloat16 (8-bit significand) or
      float16 an increment below ~1/256 of ``|h|`` is rounded away, so the state would stall.
    * ``torch.jit.script`` raises a RuntimeError saying so (use ``torch.compile``);
      ``torch.export.export`` traces the unrolled time loop (fixed sequence length); deepcopy,
      pickle, ``.double()``, ``torch.func.functional_call``, ``torch.compile``,
      ``nn.DataParallel`` and ``DistributedDataParallel`` work as with nn.RNN.
    """

    cell_class: type[RecurrentCell]

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        *,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        device=None,
        dtype=None,
        **cell_kwargs: Any,
    ) -> None:
        super().__init__()
        self.input_size = check_int("input_size", input_size, ge=1)
        self.hidden_size = check_int("hidden_size", hidden_size, ge=1)
        self.num_layers = check_int("num_layers", num_layers, ge=1)
        self.dropout = check_float("dropout", dropout, ge=0, lt=1)
        self.batch_first = bool(batch_first)
        self.bidirectional = bool(bidirectional)
        self.num_directions = 2 if bidirectional else 1
        cells = []
        for layer in range(num_layers):
            layer_in = input_size if layer == 0 else hidden_size * self.num_directions
            for _ in range(self.num_directions):
                cells.append(
                    self.cell_class(
                        layer_in, hidden_size, device=device, dtype=dtype, **cell_kwargs
                    )
                )
        self.cells = nn.ModuleList(cells)

    @property
    def num_states(self) -> int:
        return self.cells[0].num_states

    def _dtype(self) -> torch.dtype:
        """The parameters' dtype, read from an attribute: DataParallel replicas hold their
        parameters as plain attributes and ``parameters()`` of a replica is empty."""
        cell = self.cells[0]
        weight = getattr(cell, "weight_ih", None)
        if isinstance(weight, Tensor):
            return weight.dtype
        return next(iter(cell.parameters()), torch.empty(0)).dtype

    # --- the rest of torch.nn.RNN's surface ---------------------------------------------------
    def flatten_parameters(self) -> None:
        """Does nothing; here so that scripts written for torch.nn.RNN run unchanged.

        nn.RNN copies its weights into one contiguous buffer for cuDNN (scripts call this after
        loading weights, moving the model or before evaluation). This layer's kernels read each
        cell's parameters where they are, so there is nothing to flatten, on any device.
        """

    @property
    def all_weights(self) -> list[list[nn.Parameter]]:
        """The parameters of every cell: ``all_weights[l * D + d]`` is the list of cell
        ``cells[l * D + d]``'s parameters, in registration order.

        Same nesting as nn.RNN's (one list per layer and direction, torch's order), different
        contents: nn.RNN's lists are ``[weight_ih, weight_hh, bias_ih, bias_hh]``; here they
        are the unit's own parameters, e.g. ``[M_A, M_W, weight_ih, bias_ih]`` for the Lipschitz
        cell (see the class docstring for the correspondence).
        """
        return [list(cell.parameters()) for cell in self.cells]

    def __prepare_scriptable__(self):
        """torch.jit.script calls this first: refuse with a clear message."""
        _refuse_torchscript(self)

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        if self.batch_first:
            s += ", batch_first=True"
        if self.dropout:
            s += f", dropout={self.dropout}"
        if self.bidirectional:
            s += ", bidirectional=True"
        return s

    # ------------------------------------------------------------------------------------------
    def _run_direction(
        self, cell: RecurrentCell, x: Tensor, h0: Tensor, batch_sizes: Tensor | None, reverse: bool
    ) -> tuple[Tensor, Tensor]:
        """Return (states, last state) of one cell over one direction. Overridden for fast paths."""
        return cell.scan(cell.input_projection(x), h0, cell.recurrence(), batch_sizes, reverse)

    def forward(self, input, hx=None):
        data = input.data if isinstance(input, PackedSequence) else input
        if isinstance(data, Tensor) and autocast_active(data.device.type):
            # run in the parameters' dtype (see the class docstring: autocast)
            dtype = self._dtype()
            if data.is_floating_point() and data.dtype != dtype:
                data = data.to(dtype)
                if isinstance(input, PackedSequence):
                    input = PackedSequence(data, *input[1:])
                else:
                    input = data
            with torch.autocast(data.device.type, enabled=False):
                return self._forward(input, hx)
        return self._forward(input, hx)

    def _forward(self, input, hx):
        packed = isinstance(input, PackedSequence)
        if packed:
            x, batch_sizes, sorted_indices, unsorted_indices = input
            batch = int(batch_sizes[0])
            batched = True
        else:
            if not isinstance(input, Tensor):
                raise TypeError(
                    f"input must be a Tensor or PackedSequence, got {type(input).__name__}"
                )
            if input.dim() not in (2, 3):
                raise ValueError(
                    f"input must be 2-D (unbatched) or 3-D, got {input.dim()}-D of shape "
                    f"{tuple(input.shape)}"
                )
            batched = input.dim() == 3
            x = input
            if not batched:
                x = x.unsqueeze(1)
            elif self.batch_first:
                x = x.transpose(0, 1)
            batch_sizes = sorted_indices = unsorted_indices = None
            batch = x.shape[1]
        if x.shape[-1] != self.input_size:
            raise ValueError(
                f"input.size(-1) must be equal to input_size. Expected {self.input_size}, "
                f"got {x.shape[-1]}"
            )
        dtype = self._dtype()
        if x.dtype != dtype:
            raise ValueError(
                f"input dtype ({x.dtype}) does not match the parameters' dtype ({dtype}): "
                f"convert the input (input.to({dtype})) or the model (model.to({x.dtype}))"
            )
        h0 = self._initial_state(hx, batch, batched, x, sorted_indices)

        finals: list[Tensor] = []
        layer_input = x
        D = self.num_directions
        for layer in range(self.num_layers):
            outs = []
            for d in range(D):
                i = layer * D + d
                states, last = self._run_direction(
                    self.cells[i], layer_input, h0[i], batch_sizes, reverse=(d == 1)
                )
                outs.append(states[..., : self.hidden_size])
                finals.append(last)
            layer_input = outs[0] if D == 1 else torch.cat(outs, -1)
            if self.dropout > 0 and self.training and layer < self.num_layers - 1:
                layer_input = F.dropout(layer_input, self.dropout, True)
        h_n = torch.stack(finals, 0)  # (L*D, B, state_size)
        if packed:
            if unsorted_indices is not None:
                h_n = h_n.index_select(1, unsorted_indices)
            output = PackedSequence(layer_input, batch_sizes, sorted_indices, unsorted_indices)
        else:
            output = layer_input
            if not batched:
                output = output.squeeze(1)
                h_n = h_n.squeeze(1)
            elif self.batch_first:
                output = output.transpose(0, 1)
        if self.num_states == 1:
            return output, h_n
        return output, tuple(h_n.split(self.hidden_size, -1))

    def _initial_state(self, hx, batch: int, batched: bool, like: Tensor, sorted_indices):
        n = self.num_layers * self.num_directions
        S = self.cells[0].state_size
        if hx is None:
            return like.new_zeros(n, batch, S)
        expected = (n, batch, self.hidden_size) if batched else (n, self.hidden_size)
        parts = hx if isinstance(hx, (tuple, list)) else (hx,)
        if len(parts) != self.num_states:
            kind = "a Tensor" if self.num_states == 1 else f"a tuple of {self.num_states} Tensors"
            raise ValueError(f"hx must be {kind} of shape {expected}")
        for p in parts:
            if not isinstance(p, Tensor):
                raise TypeError(f"hx must be a Tensor, got {type(p).__name__}")
            if tuple(p.shape) != expected:
                raise ValueError(f"Expected hidden size {expected}, got {tuple(p.shape)} for hx")
        h = torch.cat([p.to(like.dtype) for p in parts], -1)
        if not batched:
            h = h.unsqueeze(1)
        if sorted_indices is not None:
            h = h.index_select(1, sorted_indices)
        return h
