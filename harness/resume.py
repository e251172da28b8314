"""Checkpoints of trainings in progress, so that a killed run resumes a training where it stopped.

The shared loop (:func:`harness.training.fit`) saves one at the end of an epoch, at most every
``interval`` seconds, and always after its last epoch. A checkpoint holds everything the rest of
the training depends on: the model, the optimiser and the learning-rate scheduler, the loop's
shuffling generator, Python's, NumPy's and torch's global random states, the generators of the
training attacks (:meth:`TrainingCheckpoints.track`), the loop's epoch and step, its training split
if a hook replaced it, and the hooks' own ``state_dict()``. So a resumed training ends with the
weights an uninterrupted one ends with.

Checkpoints are cache entries of kind ``training``, named ``<key>-<fit>-e<epoch>`` (and ``-final``
after a loop's last epoch), where ``<fit>`` counts the loop's calls within one training (a
two-phase defense calls it twice). A training with a model horizon (see
:attr:`harness.suite.Cell.resume_config`) keeps its final checkpoints, from which a longer training
continues; any other training's checkpoints are removed once its model is cached.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from harness.cache import ArtifactCache
    from harness.contracts import TrainingHooks, TrainingSettings, TrainingState

KIND = "training"


def split_tensors(value: Any, path: str, tensors: dict[str, torch.Tensor]) -> Any:
    """``value`` (nested dicts, lists, tuples, tensors and JSON scalars) as JSON, each tensor moved
    to ``tensors`` under its path and replaced by ``{"tensor": path}``."""
    if isinstance(value, torch.Tensor):
        tensors[path] = value.detach().cpu().clone()
        return {"tensor": path}
    if isinstance(value, Mapping):
        return {"dict": [[key, split_tensors(item, f"{path}/{key}", tensors)] for key, item in value.items()]}
    if isinstance(value, (list, tuple)):
        items = [split_tensors(item, f"{path}/{index}", tensors) for index, item in enumerate(value)]
        return {"tuple" if isinstance(value, tuple) else "list": items}
    return {"value": value}


def join_tensors(value: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    """The inverse of :func:`split_tensors`."""
    if "tensor" in value:
        return tensors[value["tensor"]]
    if "dict" in value:
        return {key: join_tensors(item, tensors) for key, item in value["dict"]}
    if "list" in value:
        return [join_tensors(item, tensors) for item in value["list"]]
    if "tuple" in value:
        return tuple(join_tensors(item, tensors) for item in value["tuple"])
    return value["value"]


def settings_identity(settings: TrainingSettings) -> dict[str, Any]:
    """The loop's settings but their length: a checkpoint continues only a training with these."""
    return {
        "batch_size": settings.batch_size, "lr": settings.lr, "optimizer": settings.optimizer,
        "optimizer_options": {k: repr(v) for k, v in sorted(settings.optimizer_options.items())},
        "lr_decay": settings.lr_decay, "lr_decay_steps": settings.lr_decay_steps,
        "lr_decay_epochs": settings.lr_decay_epochs, "clip_grad_norm": settings.clip_grad_norm,
        "clip_grad_value": settings.clip_grad_value,
    }  # fmt: skip


NAME = re.compile(r"-(?P<fit>\d+)-e(?P<epoch>\d+)(?P<final>-final)?$")


@dataclass
class Loop:
    """What one call of the shared loop saves and restores besides its :class:`TrainingState`."""

    state: TrainingState
    shuffle: torch.Generator
    scheduler: torch.optim.lr_scheduler.LRScheduler | None
    hooks: Sequence[TrainingHooks]


@dataclass
class TrainingCheckpoints:
    """The checkpoints of one training (one cell's backbone), under ``key`` in ``cache``."""

    cache: ArtifactCache
    key: str
    config: Mapping[str, Any]
    interval: float = 600.0
    """Seconds between two checkpoints of a loop (0: after every epoch)."""
    keep_final: bool = False
    """Keep each loop's final checkpoint when the training is done (a model with a horizon)."""
    resumed_seconds: float = 0.0
    """Training seconds spent before the checkpoints this process resumed from."""
    _fits: int = 0
    _generators: list[torch.Generator] = field(default_factory=list)

    def track(self, generator: torch.Generator) -> torch.Generator:
        """Save and restore ``generator``'s state with the global random states."""
        self._generators.append(generator)
        return generator

    def start(self, loop: Loop) -> ResumedLoop:
        """The next call of the shared loop: restored from its latest usable checkpoint, if any."""
        fit, self._fits = self._fits, self._fits + 1
        resumed = ResumedLoop(self, fit, loop)
        resumed.restore()
        return resumed

    def entry_config(self, fit: int, epoch: int, settings: TrainingSettings) -> dict[str, Any]:
        return {**self.config, "fit": fit, "epoch": epoch, "settings": settings_identity(settings)}

    def saved(self, fit: int | None = None) -> list[tuple[int, int, bool, str]]:
        """(fit, epoch, final, entry key) of this training's checkpoints, latest epoch first."""
        found = []
        for key in self.cache.keys(KIND, f"{self.key}-"):
            match = NAME.search(key)
            if match and key == f"{self.key}{match.group(0)}" and (fit is None or int(match["fit"]) == fit):
                found.append((int(match["fit"]), int(match["epoch"]), bool(match["final"]), key))
        return sorted(found, key=lambda item: -item[1])

    def finish(self) -> None:
        """Remove the training's checkpoints once its model is cached (but the final ones of a
        training that a longer one may continue)."""
        for _, _, final, key in self.saved():
            if not (final and self.keep_final):
                self.cache.remove(KIND, key)


@dataclass
class ResumedLoop:
    """One call of the shared loop and its checkpoints: ``restore`` at its start, ``epoch_done``
    after each epoch."""

    checkpoints: TrainingCheckpoints
    fit: int
    loop: Loop
    start_epoch: int = 0
    _seconds_before: float = 0.0
    _started: float = field(default_factory=time.perf_counter)
    _last_save: float = field(default_factory=time.perf_counter)

    def restore(self) -> None:
        settings = self.loop.state.settings
        for _, epoch, _, key in self.checkpoints.saved(self.fit):
            if epoch > settings.epochs:
                continue
            entry = self.checkpoints.cache.load(KIND, key, self.checkpoints.entry_config(self.fit, epoch, settings))
            if entry is not None:
                self._load(entry.tensors, entry.meta)
                self.start_epoch = epoch
                return

    def epoch_done(self) -> None:
        """Save a checkpoint if the interval has passed or the loop's last epoch is done."""
        state = self.loop.state
        epoch = state.epoch + 1
        final = epoch == state.settings.epochs
        now = time.perf_counter()
        if not final and now - self._last_save < self.checkpoints.interval:
            return
        tensors: dict[str, torch.Tensor] = {}
        meta = self._state(tensors)
        key = f"{self.checkpoints.key}-{self.fit}-e{epoch}{'-final' if final else ''}"
        config = self.checkpoints.entry_config(self.fit, epoch, state.settings)
        self.checkpoints.cache.save(KIND, key, config, tensors, **meta)
        for _, older, older_final, older_key in self.checkpoints.saved(self.fit):
            if older < epoch and not older_final:
                self.checkpoints.cache.remove(KIND, older_key)
        self._last_save = now

    def _state(self, tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
        state, loop = self.loop.state, self.loop
        python_version, python_state, python_gauss = random.getstate()
        _, numpy_keys, numpy_position, numpy_has_gauss, numpy_gauss = np.random.get_state()
        tensors["rng/numpy"] = torch.from_numpy(numpy_keys.astype(np.int64))
        tensors["rng/torch"] = torch.get_rng_state()
        tensors["rng/shuffle"] = loop.shuffle.get_state()
        if torch.cuda.is_initialized():
            for index, cuda_state in enumerate(torch.cuda.get_rng_state_all()):
                tensors[f"rng/cuda/{index}"] = cuda_state
        for index, generator in enumerate(self.checkpoints._generators):
            tensors[f"rng/tracked/{index}"] = generator.get_state()
        if state.x_train is not state.data.x_train or state.y_train is not state.data.y_train:
            tensors["split/x"], tensors["split/y"] = state.x_train, state.y_train
        return {
            "epoch": state.epoch + 1,
            "step": state.step,
            "seconds": self._seconds_before + time.perf_counter() - self._started,
            "python_random": [python_version, list(python_state), python_gauss],
            "numpy_random": [int(numpy_position), int(numpy_has_gauss), float(numpy_gauss)],
            "model": split_tensors(state.model.state_dict(), "model", tensors),
            "optimizer": split_tensors(state.optimizer.state_dict(), "optimizer", tensors),
            "scheduler": None if loop.scheduler is None else split_tensors(
                loop.scheduler.state_dict(), "scheduler", tensors
            ),
            "hooks": [split_tensors(hook.state_dict(), f"hooks/{i}", tensors) for i, hook in enumerate(loop.hooks)],
        }

    def _load(self, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> None:
        state, loop = self.loop.state, self.loop
        device = next(iter(state.model.parameters()), torch.empty(0)).device
        state.model.load_state_dict(join_tensors(meta["model"], tensors))
        state.optimizer.load_state_dict(join_tensors(meta["optimizer"], tensors))  # moves state to the params' device
        if loop.scheduler is not None and meta["scheduler"] is not None:
            loop.scheduler.load_state_dict(join_tensors(meta["scheduler"], tensors))
        for hook, hook_state in zip(loop.hooks, meta["hooks"]):
            hook.load_state_dict(join_tensors(hook_state, tensors))
        if "split/x" in tensors:
            state.x_train, state.y_train = tensors["split/x"], tensors["split/y"]
        loop.shuffle.set_state(tensors["rng/shuffle"])
        version, python_state, gauss = meta["python_random"]
        random.setstate((version, tuple(python_state), gauss))
        position, has_gauss, numpy_gauss = meta["numpy_random"]
        keys = tensors["rng/numpy"].numpy().astype(np.uint32)
        np.random.set_state(("MT19937", keys, position, has_gauss, numpy_gauss))
        torch.set_rng_state(tensors["rng/torch"])
        cuda = sorted(key for key in tensors if key.startswith("rng/cuda/"))
        if cuda and device.type == "cuda":
            torch.cuda.set_rng_state_all([tensors[key] for key in cuda])
        for index, generator in enumerate(self.checkpoints._generators):
            if f"rng/tracked/{index}" in tensors:
                generator.set_state(tensors[f"rng/tracked/{index}"])
        state.epoch, state.step = int(meta["epoch"]), int(meta["step"])
        self._seconds_before = float(meta["seconds"])
        self.checkpoints.resumed_seconds += self._seconds_before
