"""Analysis of recurrent networks: Hessian spectra, robustness curves (and Lyapunov spectra)."""

from .compare import compare_table
from .hessian import HessianSpectrum, SpectralDensity, hessian_spectrum, plot_density
from .lyapunov import LyapunovSpectrum, lyapunov_spectrum
from .robustness import (
    RobustnessCurve,
    accuracy_metric,
    evaluate_metric,
    input_noise_curve,
    mse_metric,
    plot_curves,
    weight_noise_curve,
)

__all__ = [
    "HessianSpectrum", "SpectralDensity", "hessian_spectrum", "plot_density", "RobustnessCurve",
    "accuracy_metric", "evaluate_metric", "input_noise_curve", "mse_metric", "plot_curves",
    "weight_noise_curve", "compare_table", "LyapunovSpectrum", "lyapunov_spectrum",
]
