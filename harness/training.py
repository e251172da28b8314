"""The shared minibatch training loop, and the seeding and evaluation helpers around it."""

from __future__ import annotations

import random
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch

from harness.contracts import Batch, Dataset, Model, TrainContext, TrainingHooks, TrainingSettings, TrainingState
from harness.registry import import_reference
from harness.resume import Loop, TrainingCheckpoints

LossFunction = Callable[[Model, torch.Tensor, torch.Tensor], torch.Tensor]


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch so that a cell gives the same numbers wherever it runs."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextmanager
def preserved_rng() -> Iterator[None]:
    """Run the block without changing Python's, NumPy's or torch's global random streams, so
    that work done on demand (training a teacher, or loading it from the cache) leaves the
    caller's numbers the same either way."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    torch_state = torch.get_rng_state()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
        torch.set_rng_state(torch_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)


_warmed_up = False


def warm_up() -> None:
    """Pay torch's one-off start-up costs (autograd engine, optimiser kernels) once per process,
    so that the first model's ``train_seconds`` measures its training only."""
    global _warmed_up
    if _warmed_up:
        return
    with preserved_rng():  # the first model of a process must draw the same numbers as the others
        layer = torch.nn.Linear(8, 2)
        optimizer = torch.optim.Adam(layer.parameters())
        layer(torch.ones(4, 8)).square().mean().backward()
        optimizer.step()
    _warmed_up = True


def make_optimizer(settings: TrainingSettings, parameters: Sequence[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """The optimiser that ``settings`` name: a ``torch.optim`` class (``Adam`` with ``weight_decay``)
    or a plugin's own as ``"module:Class"``."""
    if ":" in settings.optimizer:
        try:
            optimizer_class = import_reference(settings.optimizer)
        except ImportError as exc:
            module_name = settings.optimizer.partition(":")[0]
            raise ValueError(f"optimizer '{settings.optimizer}': cannot import {module_name} ({exc})") from exc
        except AttributeError:
            optimizer_class = None
    else:
        optimizer_class = getattr(torch.optim, settings.optimizer, None)
    if not (isinstance(optimizer_class, type) and issubclass(optimizer_class, torch.optim.Optimizer)):
        raise ValueError(
            f"unknown optimizer '{settings.optimizer}' (a torch.optim class name, e.g. Adam, or 'module:Class')"
        )
    return optimizer_class(parameters, lr=settings.lr, **dict(settings.optimizer_options))


def clip_gradients(model: Model, settings: TrainingSettings) -> None:
    """Clip by global norm, then by value, as ``settings`` ask."""
    if settings.clip_grad_norm:
        torch.nn.utils.clip_grad_norm_(model.parameters(), settings.clip_grad_norm)
    if settings.clip_grad_value:
        torch.nn.utils.clip_grad_value_(model.parameters(), settings.clip_grad_value)


def fit(
    model: Model,
    data: Dataset,
    ctx: TrainContext,
    hooks: Sequence[TrainingHooks] = (),
    settings: TrainingSettings | None = None,
    checkpoints: TrainingCheckpoints | None = None,
) -> None:
    """The shared loop: minimise ``model.loss`` over shuffled minibatches of the train split.

    ``settings`` default to ``model.training_settings()``. The shuffling draws from its own
    generator seeded with ``ctx.seed``; the hooks are called in order at each step (see
    :class:`harness.contracts.TrainingHooks`). The model is in training mode for every step and in
    evaluation mode afterwards. With ``checkpoints`` the loop resumes from its latest checkpoint
    and saves new ones (:mod:`harness.resume`; the runner binds them into ``ctx.loop``).
    """
    settings = settings or model.training_settings()
    model.to(ctx.device)
    optimizer = make_optimizer(settings, list(model.parameters()))
    if settings.lr_decay_steps and settings.lr_decay_epochs:
        raise ValueError("give lr_decay_steps or lr_decay_epochs, not both")
    decay_every = settings.lr_decay_steps or settings.lr_decay_epochs
    scheduler = None
    if decay_every:
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, decay_every, gamma=settings.lr_decay)
    generator = torch.Generator().manual_seed(ctx.seed)
    state = TrainingState(model, data, ctx, settings, optimizer, data.x_train, data.y_train)
    for hook in hooks:
        hook.training_started(state)
    resumed = None if checkpoints is None else checkpoints.start(Loop(state, generator, scheduler, hooks))
    first = resumed.start_epoch if resumed is not None else 0
    for epoch in ctx.progress(range(first, settings.epochs), f"train {type(model).__name__}"):
        state.epoch = epoch
        for hook in hooks:
            hook.epoch_started(state)
        order = torch.randperm(len(state.y_train), generator=generator)
        for index in order.split(settings.batch_size):
            model.train()
            batch = Batch(state.x_train[index].to(ctx.device), state.y_train[index].to(ctx.device), index)
            for hook in hooks:
                batch = hook.prepare_batch(state, batch)
            state.batch, state.outputs = batch, {}
            loss = model.loss(batch.x, batch.y, state)
            for hook in hooks:
                loss = hook.extend_loss(state, batch, loss)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            clip_gradients(model, settings)
            optimizer.step()
            if scheduler is not None and settings.lr_decay_steps:
                scheduler.step()
            state.step += 1
        if scheduler is not None and settings.lr_decay_epochs:
            scheduler.step()
        for hook in hooks:
            hook.epoch_finished(state)
        if resumed is not None:
            resumed.epoch_done()
    for hook in hooks:
        hook.training_finished(state)
    model.eval()


def fit_minibatches(
    model: Model,
    data: Dataset,
    ctx: TrainContext,
    loss_fn: LossFunction,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float = 0.0,
    description: str = "train",
) -> None:
    """Deprecated: give the model ``loss`` and ``training_settings`` and call ``ctx.fit``."""
    warnings.warn(
        "harness.training.fit_minibatches is deprecated: implement Model.loss and Model.training_settings, "
        "and call ctx.fit(model, data)",
        DeprecationWarning,
        stacklevel=2,
    )

    class _Loss(TrainingHooks):
        def extend_loss(self, state: TrainingState, batch: Batch, loss: torch.Tensor) -> torch.Tensor:
            return loss_fn(model, batch.x, batch.y)

    settings = TrainingSettings(epochs, batch_size, lr, "Adam", {"weight_decay": weight_decay})
    original_loss = model.loss
    model.loss = lambda x, y, state: torch.zeros((), device=x.device)  # replaced by the hook
    try:
        fit(model, data, ctx, [_Loss()], settings)
    finally:
        model.loss = original_loss


@torch.no_grad()
def predict_batched(model: Model, x: torch.Tensor, device: torch.device, batch_size: int = 512) -> torch.Tensor:
    """``model.predict`` over ``x`` in batches, returned on the CPU."""
    model.eval()
    return torch.cat([model.predict(chunk.to(device)).cpu() for chunk in x.split(batch_size)])
