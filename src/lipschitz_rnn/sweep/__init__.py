"""Hyperparameter sweeps on Ray Tune with the Lyapunov spectrum of every trial.

* :mod:`.spec` -- the TOML specification (:func:`load_spec`): base, ``[set]``, ``[grid]``,
  ``[sample]``, ``[lyapunov]``, ``[scheduler]``;
* :mod:`.probe` -- the fixed probe input of a sweep and the spectrum of a model on it;
* :mod:`.trial` -- one trial: the training loop with a callback for spectra and reports;
* :mod:`.schedulers` -- the table of schedulers: fifo, ASHA, and spectrum-guided pruning;
* :mod:`.runner` -- :func:`run_sweep` (Ray Tune, resume after a killed driver);
* :mod:`.results` -- ``trials.csv``, ``spectra.npz``, ``sweep.json``;
* :mod:`.readout` -- what the study and pruning share: the oriented final metric, the spectrum
  features of an LE epoch, the ridge predictor of the one from the other;
* :mod:`.study` -- the study (:func:`run_study`): does the early spectrum predict the final
  metric? (:mod:`.study_cv` its fair baselines: groups, repeated grouped cross-validation,
  out-of-distribution and transfer scores; :mod:`.study_tables` their tables;
  :mod:`.study_plots` its figures);
* :mod:`.pruning` -- spectrum-guided pruning (the rule behind ``kind = "lyapunov"``) and its
  offline replay against ASHA and random pruning (:func:`replay`).

Ray is imported only when a sweep runs (``pip install 'lipschitz-rnn[sweep]'``).
"""

from .pruning import replay
from .results import FEATURES, collect
from .runner import SweepProgress, run_sweep
from .schedulers import SchedulerContext, register_scheduler
from .spec import LyapunovSpec, SchedulerSpec, StudySpec, SweepSpec, TrialPlan, load_spec
from .study import run_study

__all__ = [
    "run_sweep",
    "load_spec",
    "collect",
    "SweepProgress",
    "SweepSpec",
    "TrialPlan",
    "LyapunovSpec",
    "SchedulerSpec",
    "StudySpec",
    "SchedulerContext",
    "register_scheduler",
    "FEATURES",
    "run_study",
    "replay",
]
