"""Recurrent units: the Lipschitz RNN and its peers, buildable by name.

The units (cell and layer each), :func:`build` and its table :data:`MODELS`, the readout
:class:`SequenceModel`, and the discretisation schemes (:data:`SCHEMES`, :func:`rk_step`,
:func:`max_stable_step`). The fused scan behind :class:`LipschitzRNN` and its switches
(``fused_disabled``, ``fused_backend``, ``fused_checkpointing``, ...) are in
:mod:`lipschitz_rnn.models.fused`; the parametrisations in :mod:`lipschitz_rnn.models.parametrize`.
"""

from .baselines import (
    ODERNN,
    AntisymmetricRNN,
    AntisymmetricRNNCell,
    CoRNN,
    CoRNNCell,
    ExpRNN,
    ExpRNNCell,
    ODERNNCell,
)
from .heads import SequenceModel
from .lipschitz import LipschitzRNN, LipschitzRNNCell
from .registry import MODELS, build
from .solvers import SCHEMES, max_stable_step, rk_step

__all__ = [
    "LipschitzRNN",
    "LipschitzRNNCell",
    "build",
    "MODELS",
    "SequenceModel",
    "ODERNN",
    "ODERNNCell",
    "AntisymmetricRNN",
    "AntisymmetricRNNCell",
    "CoRNN",
    "CoRNNCell",
    "ExpRNN",
    "ExpRNNCell",
    "SCHEMES",
    "rk_step",
    "max_stable_step",
]
