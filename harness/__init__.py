"""A plugin-based benchmark harness for the adversarial robustness of PyTorch models.

The core knows no paper: datasets, models, defenses, attacks and metrics come from plugins
(see :mod:`harness.hookspecs`), and results go to standardized leaderboard CSVs
(see :mod:`harness.leaderboard`). From Python: :func:`benchmark` evaluates a trained module,
:func:`run` runs a suite, :func:`read` and :func:`compare` return DataFrames (:mod:`harness.api`).
"""

from harness.api import HarnessWarning, benchmark, compare, read, run

__all__ = ["HarnessWarning", "benchmark", "compare", "read", "run"]
