"""Analysis of recurrent networks: Lyapunov spectra, Hessian spectra, robustness curves.

* :mod:`.lyapunov` -- the QR (Benettin) Lyapunov spectrum of any RNN or map; the systems it
  runs on are in :mod:`._systems` (resolution, drive, state), :mod:`._units` (the tangent map of
  every known unit) and :mod:`._jvp` (autograd tangents of arbitrary maps); :mod:`._qr` the
  re-orthonormalisation;
* :mod:`.flossing` -- gradient flossing: the differentiable spectrum pushed toward a target;
* :mod:`.features` -- scalar features of a spectrum (Kaplan-Yorke dimension, entropy rate, ...);
* :mod:`.hessian` -- Hessian spectra through curvlinops operators and scipy;
* :mod:`.robustness` -- metric against input and weight noise;
* :mod:`.compare` -- the side-by-side table of runs;
* :mod:`.plots` -- every figure of the above.
"""

from .compare import compare_table
from .features import entropy_rate, kaplan_yorke_dimension, spectrum_features
from .flossing import flossing_loss
from .hessian import HessianSpectrum, SpectralDensity, hessian_spectrum
from .lyapunov import LyapunovSpectrum, NonFiniteStateError, lyapunov_spectrum
from .plots import plot_curves, plot_density, plot_evolution, plot_spectrum
from .robustness import (
    RobustnessCurve,
    accuracy_metric,
    evaluate_metric,
    input_noise_curve,
    mse_metric,
    weight_noise_curve,
)

__all__ = [
    "HessianSpectrum", "SpectralDensity", "hessian_spectrum", "plot_density", "RobustnessCurve",
    "accuracy_metric", "evaluate_metric", "input_noise_curve", "mse_metric", "plot_curves",
    "weight_noise_curve", "compare_table", "LyapunovSpectrum", "NonFiniteStateError",
    "lyapunov_spectrum", "plot_spectrum", "plot_evolution", "kaplan_yorke_dimension",
    "entropy_rate", "spectrum_features", "flossing_loss",
]
