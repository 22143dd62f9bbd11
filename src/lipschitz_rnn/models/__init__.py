"""Recurrent units: the Lipschitz RNN and its peers, buildable by name."""

from ._fused import fused_backend, fused_checkpointing, fused_disabled, lipschitz_scan
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
from .lipschitz import SOLVERS, LipschitzRNN, LipschitzRNNCell
from .parametrize import symmetric_skew
from .registry import MODELS, build

__all__ = [
    "LipschitzRNN",
    "LipschitzRNNCell",
    "SOLVERS",
    "symmetric_skew",
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
    "lipschitz_scan",
    "fused_checkpointing",
    "fused_disabled",
    "fused_backend",
]
