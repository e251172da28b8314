"""TensorFlow 1's RMSProp, which the reference trains the SCAE with.

``torch.optim.RMSprop`` is a different optimiser for the same name: its mean square starts at 0
(TF1: 1), it decays by ``alpha`` = 0.99 (TF1's ``decay`` = 0.9), and it adds ``eps`` outside the
square root (TF1: inside). With the reference's learning rate of 3e-5 the first steps differ by
orders of magnitude (a zero mean square makes the first update lr * g / (0.1 |g|), TF1's is about
lr * g), so the ``paper`` preset needs this one.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


class TF1RMSprop(torch.optim.Optimizer):
    """``tf.compat.v1.train.RMSPropOptimizer`` (not centred), per parameter:

    ms  <- decay * ms + (1 - decay) * g^2          (ms starts at 1)
    mom <- momentum * mom + lr * g / sqrt(ms + eps)
    p   <- p - mom
    """

    def __init__(
        self, params: Iterable[torch.nn.Parameter], lr: float, decay: float = 0.9, momentum: float = 0.0,
        eps: float = 1e-10,
    ):
        if lr < 0 or not 0 <= decay < 1 or momentum < 0 or eps < 0:
            raise ValueError(f"invalid TF1RMSprop settings: lr {lr}, decay {decay}, momentum {momentum}, eps {eps}")
        super().__init__(params, {"lr": lr, "decay": decay, "momentum": momentum, "eps": eps})

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001, ANN201 (torch's signature)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                state = self.state[param]
                if not state:
                    state["mean_square"] = torch.ones_like(param)
                    state["momentum"] = torch.zeros_like(param)
                grad = param.grad
                mean_square, momentum = state["mean_square"], state["momentum"]
                mean_square.mul_(group["decay"]).addcmul_(grad, grad, value=1 - group["decay"])
                momentum.mul_(group["momentum"]).addcdiv_(grad, (mean_square + group["eps"]).sqrt(), value=group["lr"])
                param.sub_(momentum)
        return loss
