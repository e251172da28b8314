"""A plugin-based benchmark harness for the adversarial robustness of PyTorch models.

The core knows no paper: datasets, models, defenses, attacks and metrics come from plugins
(see :mod:`harness.hookspecs`), and results go to standardized leaderboard CSVs
(see :mod:`harness.leaderboard`).
"""
