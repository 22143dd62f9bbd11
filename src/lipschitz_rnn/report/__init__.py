"""A self-contained HTML report of run and sweep directories (``lipschitz-rnn report``).

:func:`write_report` reads what a directory holds -- ``config.toml``, ``metrics.jsonl``,
``results.json``, the best checkpoint (for the stability certificate), the analyses'
``lyapunov.json``, ``hessian.json``, ``robustness.json``; for a sweep ``sweep.json``,
``trials.csv``, ``trials/<id>/`` and a study's ``study.md``/``study.json`` and plots -- and writes
one HTML file that needs nothing else: figures are matplotlib SVGs (PNG for a study's plots)
inlined as ``data:`` URIs, no script, style or font is loaded from anywhere. Pieces a directory
lacks are skipped with a note; a directory that is neither a run nor a sweep is refused.
"""

from ._build import REPORT_NAME, build_report, default_report_path, write_report

__all__ = ["write_report", "build_report", "default_report_path", "REPORT_NAME"]
