"""lipschitz-rnn: recurrent networks as dynamical systems.

The Lipschitz RNN (Erichson et al., ICLR 2021) behind torch.nn.RNN's interface, its stability
certificate, peer units, and analysis tools (Lyapunov and Hessian spectra, robustness).

The names below come from :mod:`lipschitz_rnn.models` and load it (and torch) on first use,
so that ``import lipschitz_rnn.cli`` (``lipschitz-rnn --help``) stays light.
"""

from __future__ import annotations

from importlib import import_module, metadata
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .models import LipschitzRNN, LipschitzRNNCell, SequenceModel, build

try:
    __version__ = metadata.version("lipschitz-rnn")
except metadata.PackageNotFoundError:  # a source tree on sys.path, not installed
    __version__ = "0+unknown"

__all__ = ["LipschitzRNN", "LipschitzRNNCell", "SequenceModel", "build", "__version__"]

_FROM_MODELS = ("LipschitzRNN", "LipschitzRNNCell", "SequenceModel", "build")


def __getattr__(name: str) -> Any:
    """The names of :mod:`lipschitz_rnn.models` exported here, and the subpackages, imported on
    first access (PEP 562)."""
    if name in _FROM_MODELS:
        return getattr(import_module(".models", __name__), name)
    if name == "models":
        return import_module(".models", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__, "models"})
