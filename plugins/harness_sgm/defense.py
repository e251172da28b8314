"""The Smooth Gradient Method (Eq. 21): between epochs, every stored training input moves along
the gradient of its own loss, ``x <- x + input_lr * dE/dx`` (or its sign, Eq. 20), so that the next
epoch trains on inputs made harder by the model's current sensitivity.

The paper gives the rule, not when within an epoch the gradient is read. We read it after the
epoch, with the epoch's final weights and the model in evaluation mode: no dropout, and batch norm
with its running statistics, so that each sample's gradient is its own and the model's training is
otherwise exactly the control's (same initial weights, batches and dropout draws). The paper keeps
the updated inputs unbounded ("able to extend to the entire domain of R"), so ``clip`` is off by
default.

The authors' code (``nitbix/keras``, ``keras/engine/training.py``, ``_make_update_inputs_function``)
moves each batch by ``update_inputs_lr`` times the gradient of the batch's *mean* loss, in training
mode, after every batch: per sample ``input_lr / b`` of the step the paper's Eq. 21 reads as (b the
batch's length, 128). ``scale = "per-sample"`` is the equation, ``"batch-mean"`` the code's scale
(it matters only without ``sign``). We keep our timing and evaluation mode for both: in the
published ``_fit_loop`` the moved batch is assigned to a local and dropped, and ``fit_generator``
never calls the function, so the code as published never changes the training data.
"""

from __future__ import annotations

import torch

from harness.contracts import Batch, Model, TrainingLoopDefense, TrainingState


SCALES = ("per-sample", "batch-mean")


def input_gradient_step(
    model: Model,
    x: torch.Tensor,
    y: torch.Tensor,
    state: TrainingState,
    input_lr: float,
    sign: bool,
    clip: bool,
    scale: str = "per-sample",
) -> torch.Tensor:
    """``x`` moved by ``input_lr`` times each sample's loss gradient (or its sign), as a new tensor
    on ``x``'s device; the model's mode is restored and its parameters get no gradients.

    The core's objective is a batch mean (the Classifier's cross-entropy), and in evaluation mode
    samples do not interact, so the batch size times the gradient of the batch's loss is each
    sample's gradient of its own loss (``per-sample``); ``batch-mean`` keeps the gradient of the
    batch's mean loss, as the authors' code does, batches of the training batch size in order.
    """
    training = model.training
    model.eval()
    device = state.ctx.device
    moved = torch.empty_like(x)
    try:
        for index in torch.arange(len(x)).split(state.settings.batch_size):
            inputs = x[index].to(device).requires_grad_()
            labels = y[index].to(device)
            state.batch, state.outputs = Batch(inputs, labels, index), {}
            loss = model.loss(inputs, labels, state) * (len(index) if scale == "per-sample" else 1)
            (gradient,) = torch.autograd.grad(loss, inputs)
            step = gradient.sign() if sign else gradient
            updated = inputs.detach() + input_lr * step
            moved[index] = (updated.clamp(0.0, 1.0) if clip else updated).to(x.device)
    finally:
        model.train(training)
    return moved


class SmoothGradientMethod(TrainingLoopDefense):
    """After every epoch from ``start_epoch`` (counting from 0) but the last, the loop's stored
    training inputs are replaced by their moved copy; labels, the dataset and the test split are
    never touched. ``input_lr`` 0.2 is the paper's choice for robustness; ``scale`` is
    ``"per-sample"`` (the paper's equation) or ``"batch-mean"`` (the authors' code)."""

    def __init__(self, *, input_lr: float, sign: bool, clip: bool, start_epoch: int, scale: str = "per-sample"):
        if start_epoch < 0:
            raise ValueError(f"start_epoch must be at least 0, got {start_epoch}")
        if scale not in SCALES:
            raise ValueError(f"scale must be one of {', '.join(SCALES)}, got '{scale}'")
        self.input_lr, self.sign, self.clip, self.start_epoch, self.scale = input_lr, sign, clip, start_epoch, scale

    def epoch_finished(self, state: TrainingState) -> None:
        if self.start_epoch <= state.epoch < state.settings.epochs - 1:
            state.x_train = input_gradient_step(
                state.model, state.x_train, state.y_train, state, self.input_lr, self.sign, self.clip, self.scale
            )
