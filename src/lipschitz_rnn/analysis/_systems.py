"""Systems for the Lyapunov-spectrum estimator, and how a user's ``system`` resolves to one.

A :class:`TangentSystem` is a map ``h_t = F(h_{t-1}, x_t)`` on flat (batch, n) states with its
tangent push-forward. Everything the estimator needs to know about a system is a method, so that
its loop is the same for all (:func:`lipschitz_rnn.analysis.lyapunov.lyapunov_spectrum`):

* :meth:`~TangentSystem.device`: where the run happens (a model's parameters, else the inputs');
* :meth:`~TangentSystem.initial_state`: the flat initial state from ``h0`` (default zeros);
* :meth:`~TangentSystem.drive`: what :meth:`~TangentSystem.advance` consumes at each step (for
  layer stacks the first layer's input projection of all steps at once, hoisted out of the loop);
* :meth:`~TangentSystem.first_step`, then :meth:`~TangentSystem.advance` at every later step:
  ``(h, x_t, V) -> (h', V')`` with ``V' = (J V^T)^T`` for tangent rows ``V`` (batch, k, n).

Two kinds: :class:`_LayerStack` (cells and layers of this package, torch.nn.RNN/GRU/LSTM, with
the per-unit tangent maps of :mod:`._units`) and :class:`_CallableSystem` (any ``step(h, x)``,
tangents by autograd, :mod:`._jvp`). :func:`resolve_system` picks one.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models._base import RecurrentCell, RecurrentLayer
from ..models.heads import SequenceModel
from ._jvp import DENSE_MAX, jvp_rows
from ._model_state import model_device
from ._units import Block, block_for_cell, torch_block

__all__ = ["TangentSystem", "resolve_system"]


class TangentSystem:
    """A map ``h_t = F(h_{t-1}, x_t)`` on flat (batch, n) states with its tangent push-forward.

    ``n`` is the state size (None until ``h0`` gives it); ``input_size`` the features the
    inputs must have (None if unknown); ``tokens`` whether inputs are integer tokens; ``method``
    names the tangent map (reported in the result).
    """

    n: int | None = None
    input_size: int | None = None
    method: str = "?"
    tokens: bool = False

    def device(self, inputs: Any, h0: Any) -> torch.device:
        """The device the trajectory and the tangent space live on."""
        raise NotImplementedError

    def drive(
        self, x: Tensor | None, total: int, batch: int, dtype: torch.dtype, device: torch.device
    ) -> Sequence[Any]:
        """What :meth:`advance` consumes at each of the ``total`` steps, from the prepared
        (T, batch, F) inputs ``x`` (None: an autonomous run)."""
        raise NotImplementedError

    def advance(self, h: Tensor, x_t: Any, V: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def first_step(self, h: Tensor, x_t: Any, V: Tensor) -> tuple[Tensor, Tensor]:
        """The first :meth:`advance` (a system whose map is user code validates it here)."""
        return self.advance(h, x_t, V)

    #: whether :meth:`advance` queues its steps (returning a :class:`Queued` for both the state
    #: and the rows) until :meth:`flush` runs them, before each QR. Only under autograd, for one
    #: Elman layer, whose whole run is then one autograd node (:mod:`._taped`)
    lazy: bool = False

    def flush(self, h: Any, V: Any, tape: Any = None) -> tuple[Tensor, Tensor, Tensor | None]:
        """Run the steps a lazy system queued, recording them on ``tape``
        (:class:`._taped.Tape`): ``(state, rows, the states of the queued steps (steps, batch,
        n) or None)``; a system that is not lazy returns its arguments."""
        return h, V, None

    def flat_h0(self, h0: Any, batch: int | None) -> Tensor:
        return _flat_generic_h0(h0, self.n)

    def initial_state(
        self, h0: Any, batch: int | None, dtype: torch.dtype, device: torch.device
    ) -> Tensor:
        """The flat (batch, n) initial state: zeros by default (batch 1 without inputs), else
        ``h0`` in any form :meth:`flat_h0` accepts, a batch of one broadcast to ``batch``."""
        if h0 is None:
            if self.n is None:
                raise ValueError("h0 is required for a callable system (the state size is unknown)")
            return torch.zeros(batch or 1, self.n, dtype=dtype, device=device)
        h = self.flat_h0(h0, batch).to(device=device, dtype=dtype)
        if batch is not None and h.shape[0] != batch:
            if h.shape[0] != 1:
                raise ValueError(f"h0 has batch {h.shape[0]} but inputs have batch {batch}")
            h = h.expand(batch, -1)
        return h.contiguous()


class Queued:
    """The steps a lazy system has not run yet: the state and rows where they start and the
    drive of each."""

    __slots__ = ("h", "V", "drive")

    def __init__(self, h: Tensor, V: Tensor, drive: tuple) -> None:
        self.h, self.V, self.drive = h, V, drive


def _flat_generic_h0(h0: Any, n: int | None) -> Tensor:
    if not isinstance(h0, Tensor):
        raise TypeError(f"h0 must be a Tensor, got {type(h0).__name__}")
    if h0.dim() == 1:
        h0 = h0.unsqueeze(0)
    if h0.dim() != 2 or (n is not None and h0.shape[1] != n):
        want = f"(batch, {n}) or ({n},)" if n is not None else "(batch, n) or (n,)"
        raise ValueError(f"h0 must have shape {want}, got {tuple(h0.shape)}")
    return h0


# ----------------------------------------------------------------------------------------------
# stacked layers
# ----------------------------------------------------------------------------------------------
class _LayerStack(TangentSystem):
    """Unidirectional stacked layers; the state is ``[state of layer 0, state of layer 1, ...]``.

    The Jacobian of the stacked state is block lower-triangular: layer ``l`` sees the *new*
    output of layer ``l - 1`` through its input projection, whose tangent enters as ``du``.
    ``components``: per layer, the sizes of the torch-style state components (``[h, c]``).
    """

    def __init__(
        self,
        blocks: list[Block],
        components: list[list[int]],
        device: torch.device,
        embedding: Tensor | None = None,
        lazy: bool = False,
    ) -> None:
        self.blocks = blocks
        # one Elman layer under autograd (gradient flossing): the steps between two QRs run at
        # once, and the whole run is one autograd node (._taped)
        self.lazy = lazy and len(blocks) == 1 and hasattr(blocks[0], "steps")
        self.sizes = [b.state_size for b in blocks]
        self.offsets = [sum(self.sizes[:i]) for i in range(len(blocks))]
        self.n = sum(self.sizes)
        self.components = components
        self.input_size = blocks[0].input_size
        self.embedding = embedding
        self.tokens = embedding is not None
        self._device = device
        labels = sorted({b.label for b in blocks})
        self.method = "+".join(labels) + (f" x{len(blocks)} layers" if len(blocks) > 1 else "")

    def device(self, inputs, h0):
        return self._device  # the model's: its parameters were copied there

    def drive(self, x, total, batch, dtype, device):
        if x is None:  # an autonomous run is the run with x_t = 0
            u0 = self.blocks[0].project(
                torch.zeros(batch, self.input_size, dtype=dtype, device=device)
            )
            return [u0] * total
        x = x[:total]
        if self.embedding is not None:
            x = F.embedding(x, self.embedding)
        return self.blocks[0].project(x).unbind(0)

    def advance(self, h, u0, V):
        if self.lazy:
            q = h if isinstance(h, Queued) else Queued(h, V, ())
            q = Queued(q.h, q.V, (*q.drive, u0))
            return q, q
        if len(self.blocks) == 1:
            return self.blocks[0].tangent(h, u0, V, None)
        hs, Vs = [], []
        u, dU = u0, None
        for li, blk in enumerate(self.blocks):
            o, s = self.offsets[li], self.sizes[li]
            hl, Vl = blk.tangent(h[:, o : o + s], u, V[..., o : o + s], dU)
            hs.append(hl)
            Vs.append(Vl)
            if li + 1 < len(self.blocks):
                nxt = self.blocks[li + 1]
                out = hl[:, : blk.out_size]
                u = nxt.project(out)
                dU = nxt.project_tangent(out, Vl[..., : blk.out_size])
        return torch.cat(hs, -1), torch.cat(Vs, -1)

    def flush(self, h, V, tape=None):
        if not isinstance(h, Queued):
            return h, V, None
        s, V, saved = self.blocks[0].steps(h.h, torch.stack(h.drive), h.V)
        tape.steps(saved)
        return s, V, saved.S

    def flat_h0(self, h0, batch):
        L = len(self.blocks)
        sizes = self.components[0]
        if isinstance(h0, (tuple, list)):
            if len(h0) != len(sizes):
                raise ValueError(
                    f"h0 as a tuple must have {len(sizes)} tensors (torch-style hx), got {len(h0)}"
                )
            for c, size in zip(h0, sizes, strict=True):
                if not isinstance(c, Tensor) or c.dim() != 3 or c.shape[0] != L or c.shape[2] != size:
                    got = tuple(c.shape) if isinstance(c, Tensor) else type(c).__name__
                    raise ValueError(
                        f"h0 components must be (num_layers={L}, batch, {size}) tensors, got {got}"
                    )
            # per layer: [component 0, component 1]
            return torch.cat([torch.cat([p[li] for p in h0], -1) for li in range(L)], -1)
        if isinstance(h0, Tensor) and h0.dim() == 3:
            if len(sizes) != 1:
                raise ValueError(
                    "this system's state has two components: pass h0 as a tuple of two "
                    "(num_layers, batch, hidden) tensors, or flat (batch, state_size)"
                )
            if h0.shape[0] != L or h0.shape[2] != sizes[0]:
                raise ValueError(
                    f"h0 must be (num_layers={L}, batch, {sizes[0]}), got {tuple(h0.shape)}"
                )
            return torch.cat(list(h0.unbind(0)), -1)
        return _flat_generic_h0(h0, self.n)


# ----------------------------------------------------------------------------------------------
# callables
# ----------------------------------------------------------------------------------------------
class _CallableSystem(TangentSystem):
    """``step(h, x) -> h_next`` (or ``step(h)`` / ``step(h, None)`` without inputs); the state
    size comes from ``h0``."""

    def __init__(self, fn: Callable, autonomous: bool, differentiable: bool = False) -> None:
        self.fn = fn
        self.method = "autograd"
        self._jvp_state: dict = {"differentiable": differentiable}
        self.one_arg = autonomous and _accepts_one_arg(fn)

    def device(self, inputs, h0):
        for t in (inputs, h0):
            if isinstance(t, Tensor):
                return t.device
        return torch.device("cpu")

    def drive(self, x, total, batch, dtype, device):
        return [None] * total if x is None else x[:total].unbind(0)

    def advance(self, h, x_t, V):
        n = h.shape[1]
        self.method = "autograd-dense" if n <= DENSE_MAX else "torch.func.jvp"
        if self.one_arg:
            return jvp_rows(self.fn, (h,), (V,), self._jvp_state, n)
        return jvp_rows(self.fn, (h, x_t), (V, None), self._jvp_state, n)

    def first_step(self, h, x_t, V):
        """The first step, with the callable's errors and output shape reported clearly."""
        try:
            out = self.fn(h) if self.one_arg else self.fn(h, x_t)
        except Exception as e:
            how = "step(h)" if self.one_arg else "step(h, x)"
            raise TypeError(
                f"system: calling the callable as {how} with h of shape {tuple(h.shape)} failed: "
                f"{type(e).__name__}: {e}"
            ) from e
        if not isinstance(out, Tensor) or out.shape != h.shape:
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(
                f"system: the step function must return the next state shaped like h "
                f"{tuple(h.shape)}, got {got}"
            )
        return self.advance(h, x_t, V)


def _accepts_one_arg(fn: Callable) -> bool:
    """Whether ``fn(h)`` is a valid call (then autonomous maps are called with one argument)."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return False
    try:
        sig.bind(object())
    except TypeError:
        return False
    return True


# ----------------------------------------------------------------------------------------------
# resolution
# ----------------------------------------------------------------------------------------------
def _cell_copy(cell: nn.Module, dtype: torch.dtype, device) -> nn.Module:
    return copy.deepcopy(cell).to(device=device, dtype=dtype).eval().requires_grad_(False)


def _cell_as_is(cell: nn.Module, dtype: torch.dtype, device) -> nn.Module:
    """The differentiable resolution uses the cell itself (its parameters are already the
    caller's ``dtype`` copies, see :func:`lipschitz_rnn.analysis.flossing`)."""
    return cell


def _bidirectional_error(what: str) -> ValueError:
    return ValueError(
        f"system: {what} is bidirectional; Lyapunov exponents need a causal map h_t = F(h_{{t-1}},"
        " x_t) and the reverse direction runs backwards in time. Analyse a unidirectional model "
        "(or one direction's cell, e.g. layer.cells[0])"
    )


def resolve_system(
    system: Any, dtype: torch.dtype, inputs_given: bool, *, differentiable: bool = False
) -> TangentSystem:
    """Turn ``system`` into a :class:`TangentSystem` (parameters copied to ``dtype``).

    ``differentiable=True`` keeps the system's tensors in the autograd graph instead (no
    copies, no detaching; generic tangents by forward mode), so that what the estimator
    computes can be differentiated with respect to the parameters. The caller makes the
    parameters ``dtype`` first (:func:`lipschitz_rnn.analysis.flossing.flossing_loss` does it
    with ``torch.func.functional_call``).
    """
    embedding = None
    take = _cell_as_is if differentiable else _cell_copy
    if isinstance(system, SequenceModel):
        if system.embedding is not None:
            embedding = system.embedding.weight.to(dtype=dtype)
            embedding = embedding if differentiable else embedding.detach()
        system = system.rnn
    if isinstance(system, nn.Module):
        device = model_device(system)
        if embedding is not None:
            embedding = embedding.to(device)
        with torch.set_grad_enabled(differentiable and torch.is_grad_enabled()):
            if isinstance(system, (RecurrentLayer, RecurrentCell)):
                if isinstance(system, RecurrentLayer) and system.num_directions != 1:
                    raise _bidirectional_error(type(system).__name__)
                cells = system.cells if isinstance(system, RecurrentLayer) else [system]
                cells = [take(c, dtype, device) for c in cells]
                blocks = [block_for_cell(c, differentiable=differentiable) for c in cells]
                comps = [[c.hidden_size] * c.num_states for c in cells]
                return _LayerStack(blocks, comps, device, embedding)
            if isinstance(system, nn.RNNBase):
                return _torch_rnn_stack(system, dtype, device, embedding, differentiable)
            if isinstance(system, nn.RNNCellBase):
                return _torch_cell_stack(system, dtype, device, differentiable)
        if embedding is not None:
            raise TypeError(
                f"system: SequenceModel.rnn of type {type(system).__name__} is not supported"
            )
    if isinstance(system, nn.Module) and not _looks_like_step(system):
        raise TypeError(
            f"system: unsupported module {type(system).__name__}; pass a cell or layer of "
            "lipschitz_rnn, torch.nn.RNN/LSTM/GRU, a SequenceModel, or a callable step(h, x)"
        )
    if callable(system):
        return _CallableSystem(system, autonomous=not inputs_given, differentiable=differentiable)
    raise TypeError(
        f"system must be a lipschitz_rnn cell/layer, torch.nn.RNN/LSTM/GRU, a SequenceModel or a "
        f"callable step(h, x) -> h_next; got {type(system).__name__}"
    )


def _looks_like_step(m: nn.Module) -> bool:
    """A custom module is accepted as a step map when its forward takes (h, x) or (h)."""
    try:
        sig = inspect.signature(m.forward)
    except (TypeError, ValueError):
        return False
    # library modules (nn.Linear, nn.Sequential, this package's heads, ...) are not step maps
    root = type(m).__module__.split(".")[0]
    return root not in ("torch", "lipschitz_rnn") and len(sig.parameters) >= 1


def _w(m: nn.Module, name: str, dtype, device, differentiable: bool = False) -> Tensor | None:
    t = getattr(m, name, None)
    if t is None:
        return None
    return (t if differentiable else t.detach()).to(device=device, dtype=dtype)


def _torch_rnn_stack(
    rnn: nn.RNNBase, dtype, device, embedding, differentiable: bool = False
) -> _LayerStack:
    if rnn.bidirectional:
        raise _bidirectional_error(f"torch.nn.{type(rnn).__name__}")
    proj = getattr(rnn, "proj_size", 0) or 0
    blocks: list[Block] = []
    for layer in range(rnn.num_layers):
        g = lambda n, layer=layer: _w(rnn, f"{n}_l{layer}", dtype, device, differentiable)
        w_hr = g("weight_hr") if proj else None
        blocks.append(
            torch_block(
                rnn.mode, g("weight_ih"), g("weight_hh"), g("bias_ih"), g("bias_hh"), w_hr
            )
        )
    comps = [proj or rnn.hidden_size, rnn.hidden_size] if rnn.mode == "LSTM" else [rnn.hidden_size]
    return _LayerStack(blocks, [comps] * rnn.num_layers, device, embedding, lazy=differentiable)


def _torch_cell_stack(
    cell: nn.RNNCellBase, dtype, device, differentiable: bool = False
) -> _LayerStack:
    if isinstance(cell, nn.LSTMCell):
        mode = "LSTM"
    elif isinstance(cell, nn.GRUCell):
        mode = "GRU"
    elif isinstance(cell, nn.RNNCell):
        mode = "RNN_RELU" if cell.nonlinearity == "relu" else "RNN_TANH"
    else:
        raise TypeError(f"system: unsupported torch cell {type(cell).__name__}")
    g = lambda n: _w(cell, n, dtype, device, differentiable)
    block = torch_block(mode, g("weight_ih"), g("weight_hh"), g("bias_ih"), g("bias_hh"))
    H = cell.hidden_size
    return _LayerStack([block], [[H, H] if mode == "LSTM" else [H]], device, lazy=differentiable)
