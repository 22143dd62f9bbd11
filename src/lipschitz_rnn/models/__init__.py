"""Recurrent units: the Lipschitz RNN and its peers, buildable by name."""

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
]
