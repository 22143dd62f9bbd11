"""Build any recurrent layer of the package by name, all with torch.nn.RNN's interface."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .._checks import check_float
from .baselines import ODERNN, AntisymmetricRNN, CoRNN, ExpRNN
from .lipschitz import LipschitzRNN

__all__ = ["MODELS", "build"]


def _torch_rnn(input_size, hidden_size, **kw):
    return nn.RNN(input_size, hidden_size, nonlinearity="tanh", **kw)


def _irnn(input_size, hidden_size, *, init_scale: float = 1.0, **kw):
    """Le, Jaitly, Hinton (2015): ReLU units, recurrent weights = identity, biases zero."""
    rnn = nn.RNN(input_size, hidden_size, nonlinearity="relu", **kw)
    with torch.no_grad():
        for name, p in rnn.named_parameters():
            if name.startswith("weight_hh"):
                p.copy_(init_scale * torch.eye(hidden_size, dtype=p.dtype, device=p.device))
            elif name.startswith("bias"):
                p.zero_()
            elif name.startswith("weight_ih"):
                p.normal_(0.0, 0.001)
    return rnn


def _lstm(input_size, hidden_size, *, forget_bias: float | None = None, **kw):
    """torch.nn.LSTM; ``forget_bias`` (e.g. 1.0, Jozefowicz et al. 2015) sets the forget gate's
    total bias ``b_ih + b_hh`` (``b_ih`` holds it, ``b_hh`` is zeroed); None keeps torch's init."""
    rnn = nn.LSTM(input_size, hidden_size, **kw)
    if forget_bias is not None:
        if not rnn.bias:
            raise ValueError("forget_bias needs bias=True")
        f = slice(hidden_size, 2 * hidden_size)  # torch's gate order: input, forget, cell, output
        with torch.no_grad():
            for name, p in rnn.named_parameters():
                if name.startswith("bias_ih"):
                    p[f] = float(forget_bias)
                elif name.startswith("bias_hh"):
                    p[f] = 0.0
    return rnn


MODELS: dict[str, tuple[Any, str]] = {
    "lipschitz": (
        LipschitzRNN,
        "Lipschitz RNN (Erichson et al. 2021): dh/dt = A h + tanh(W h + U x + b)",
    ),
    "rnn": (_torch_rnn, "tanh Elman RNN (torch.nn.RNN)"),
    "irnn": (_irnn, "ReLU RNN with identity recurrent initialisation (Le et al. 2015)"),
    "lstm": (_lstm, "LSTM (torch.nn.LSTM; optional forget_bias)"),
    "gru": (nn.GRU, "GRU (torch.nn.GRU)"),
    "odernn": (ODERNN, "residual neural-ODE RNN: h' = h + eps tanh(W h + U x + b)"),
    "antisymmetric": (AntisymmetricRNN, "AntisymmetricRNN (Chang et al. 2019)"),
    "cornn": (CoRNN, "coupled oscillatory RNN (Rusch & Mishra 2021)"),
    "exprnn": (ExpRNN, "orthogonal RNN via the matrix exponential, modReLU (Lezcano-Casado 2019)"),
}


def build(name: str, input_size: int, hidden_size: int, **kw: Any) -> nn.Module:
    """Build the layer called ``name`` (one of :data:`MODELS`).

    Every layer takes ``(input, hx=None)`` and returns ``(output, h_n)`` like torch.nn.RNN;
    keywords (``num_layers``, ``batch_first``, ``dropout``, ``bidirectional`` and the unit's own,
    e.g. ``eps`` or ``solver``) pass through.

    ``init_scale = p`` sets the initialisation scale of any unit (for sweeps across
    architectures):

    * ``rnn``, ``lstm``, ``gru`` and the baselines ``odernn``, ``antisymmetric``, ``cornn``,
      ``exprnn``: every weight matrix (input-to-hidden and hidden-to-hidden, all layers and
      gates) is drawn from U(-p, p), as in the code of Vogt et al. (2020); biases keep their
      initialisation (e.g. ``forget_bias``). For ``antisymmetric`` the recurrence is
      ``W - W^T`` of that ``W``; for ``exprnn`` the skew generator ``log_hh`` is drawn (the
      recurrent matrix stays orthogonal, ``p`` sets its rotation angles);
    * ``lipschitz``: it is the cell's ``init_std`` (``M_A``, ``M_W`` ~ N(0, (p / hidden_size)^2));
    * ``irnn``: the recurrent matrix is ``p I`` (its own ``init_scale``).
    """
    if not isinstance(name, str) or name not in MODELS:
        raise ValueError(f"name must be one of {sorted(MODELS)}, got {name!r}")
    factory = MODELS[name][0]
    scale = kw.pop("init_scale", None) if name not in ("irnn", "lipschitz") else None
    if name == "lipschitz" and "init_scale" in kw:
        if "init_std" in kw:
            raise ValueError("build('lipschitz'): give init_scale or init_std, not both")
        kw["init_std"] = kw.pop("init_scale")
    if scale is not None:
        scale = check_float("init_scale", scale, ge=0)
    try:
        layer = factory(input_size, hidden_size, **kw)
    except TypeError as e:
        raise TypeError(f"build({name!r}): {e}") from e
    if scale is not None:
        _uniform_weights(layer, scale)
    return layer


def _uniform_weights(layer: nn.Module, p: float) -> None:
    """Every weight matrix of ``layer`` (parameters named ``weight_*``, and ``log_hh``, the
    skew generator of exprnn) drawn from U(-p, p); biases keep their initialisation."""
    with torch.no_grad():
        for pname, w in layer.named_parameters():
            leaf = pname.rsplit(".", 1)[-1]
            if leaf.startswith("weight_") or leaf == "log_hh":
                w.uniform_(-p, p)
