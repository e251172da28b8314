"""Training and evaluation helpers shared by model and defense plugins."""

from __future__ import annotations

import random
from collections.abc import Callable

import numpy as np
import torch

from harness.contracts import Dataset, Model, TrainContext

LossFunction = Callable[[Model, torch.Tensor, torch.Tensor], torch.Tensor]


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch so that a cell gives the same numbers wherever it runs."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


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
    """Minimise ``loss_fn(model, x, y)`` with Adam over shuffled minibatches of the train split."""
    model.to(ctx.device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    generator = torch.Generator().manual_seed(ctx.seed)
    for _ in ctx.progress(range(epochs), description):
        order = torch.randperm(len(data.y_train), generator=generator)
        for index in order.split(batch_size):
            x = data.x_train[index].to(ctx.device)
            y = data.y_train[index].to(ctx.device)
            loss = loss_fn(model, x, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    model.eval()


@torch.no_grad()
def predict_batched(model: Model, x: torch.Tensor, device: torch.device, batch_size: int = 512) -> torch.Tensor:
    """``model.predict`` over ``x`` in batches, returned on the CPU."""
    model.eval()
    return torch.cat([model.predict(chunk.to(device)).cpu() for chunk in x.split(batch_size)])
