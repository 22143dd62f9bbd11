"""lipschitz-rnn: recurrent networks as dynamical systems.

The Lipschitz RNN (Erichson et al., ICLR 2021) behind torch.nn.RNN's interface, its stability
certificate, peer units, and analysis tools (Lyapunov and Hessian spectra, robustness).
"""

from .models import LipschitzRNN, LipschitzRNNCell, SequenceModel, build

__version__ = "0.1.0"
__all__ = ["LipschitzRNN", "LipschitzRNNCell", "SequenceModel", "build", "__version__"]
