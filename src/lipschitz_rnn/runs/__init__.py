"""Runs and sweeps on disk: what defines a run (its configuration and task), the one reader and
writer of a run directory (:class:`RunDir`) and of a sweep directory (:class:`SweepDir`), and the
analyses of run directories.

Training (:mod:`lipschitz_rnn.train`), sweeps (:mod:`lipschitz_rnn.sweep`), the report
(:mod:`lipschitz_rnn.report`) and the command line read and write runs through this package.
"""

from .analyses import compare_runs, hessian_run, lyapunov_evolution, lyapunov_run, robustness_run
from .config import TrainConfig, list_presets, resolve_config
from .rundir import RunDir, evaluate_run, load_run, read_results
from .sweepdir import SweepDir

__all__ = [
    "TrainConfig",
    "list_presets",
    "resolve_config",
    "RunDir",
    "SweepDir",
    "load_run",
    "evaluate_run",
    "read_results",
    "lyapunov_run",
    "lyapunov_evolution",
    "hessian_run",
    "robustness_run",
    "compare_runs",
]
