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
from .fused import (
    fused_backend,
    fused_buffer_reuse,
    fused_checkpointing,
    fused_disabled,
    kernel_status,
    lipschitz_scan,
    release_fused_buffers,
)
from .heads import SequenceModel
from .lipschitz import SOLVERS, LipschitzRNN, LipschitzRNNCell
from .parametrize import symmetric_skew
from .registry import MODELS, build
from .solvers import SCHEMES, max_stable_step, rk_step

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
    "fused_buffer_reuse",
    "release_fused_buffers",
    "kernel_status",
    "SCHEMES",
    "rk_step",
    "max_stable_step",
]
