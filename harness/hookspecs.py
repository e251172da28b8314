"""The hooks a harness plugin can implement.

A plugin is a module (usually registered under the ``harness`` entry-point group) whose functions
are decorated with :data:`hookimpl` and named after one of the specs below. The shipped plugins in
``plugins/`` are registered exactly like third-party ones.

Registration hooks use the register-callback idiom: the harness calls the hook with a ``register``
function and the plugin calls it once per component it provides. Registration must stay cheap and
must not import torch or ART; the component itself is named by a ``"module:attribute"`` string (or
given as a callable) and only imported when a suite uses it.

Lifecycle hooks are called by the runner so that reporter plugins can follow a run. pluggy calls
them, so its order, ``tryfirst``/``trylast`` and wrappers apply; an ordinary implementation that
raises is reported as a warning and the others still run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from harness.registry import RegisterFunction
    from harness.suite import Cell, Suite

PROJECT_NAME = "harness"
ENTRY_POINT_GROUP = "harness"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def register_datasets(register: RegisterFunction) -> None:
    """Register datasets.

    ``register(name, factory, params=..., description=...)``. The factory is called as
    ``factory(data_dir=Path, **params)`` and returns a :class:`harness.contracts.Dataset`.
    """


@hookspec
def register_models(register: RegisterFunction) -> None:
    """Register models.

    ``register(name, factory, params=..., description=...)``. The factory is called as
    ``factory(input_shape=(C, H, W), num_classes=int, **params)`` and returns a
    :class:`harness.contracts.Model`, untrained.
    """


@hookspec
def register_defenses(register: RegisterFunction) -> None:
    """Register defenses (training recipes).

    ``register(name, factory, params=..., description=...)``. The factory is called as
    ``factory(**params)`` and returns a :class:`harness.contracts.Defense`.
    """


@hookspec
def register_attacks(register: RegisterFunction) -> None:
    """Register attacks.

    ``register(name, factory, params=..., choices=..., description=...)``. The factory is called
    as ``factory(**params)`` and returns a :class:`harness.contracts.Attack`. Declare the norms an
    attack supports with ``choices={"norm": (...)}`` so that suites are checked before a run.
    """


@hookspec
def register_metrics(register: RegisterFunction) -> None:
    """Register extra leaderboard metrics, written as ``metric_<name>`` columns.

    ``register(name, factory, params=..., description=...)``. The factory is called as
    ``factory(**params)`` and returns a :class:`harness.contracts.Metric`.
    """


@hookspec
def suite_started(suite: Suite, cells: list[Cell]) -> None:
    """A run of ``suite`` starts; ``cells`` are the cells it will compute (completed ones excluded)."""


@hookspec
def cell_started(cell: Cell) -> None:
    """The runner starts computing ``cell``."""


@hookspec
def cell_finished(cell: Cell, row: dict[str, Any]) -> None:
    """``cell`` is finished and ``row`` (its leaderboard row, any status) has been persisted."""


@hookspec
def suite_finished(suite: Suite, rows: list[dict[str, Any]]) -> None:
    """A run of ``suite`` ended; ``rows`` are all rows of its leaderboard."""
