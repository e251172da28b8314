"""Models trained outside the harness: the ``checkpoint`` model of a suite (a TorchScript file, or
a factory with an optional state dict) and the in-memory modules of :func:`harness.benchmark`.

They are loaded, never trained. Attacks always perturb images in [0, 1], so that every entry of a
leaderboard faces the same threat model; a network that expects another range or normalised
inputs gets them from :class:`PretrainedClassifier`, inside the model, where the attacks'
gradients pass through the conversion (normalising outside the model is the pitfall that makes
an eps mean something else for every entry).
"""

from __future__ import annotations

import pickle
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from harness.contracts import LOGITS, Dataset, Model, TrainContext
from harness.errors import one_line
from harness.registry import import_reference


class PretrainedClassifier(Model):
    """A trained network whose outputs are class scores, fed images in [0, 1] converted to its
    own input convention: ``input_range`` (its pixel range, e.g. [0, 255]) and then per-channel
    ``mean`` and ``std`` (``(x - mean) / std``; one value or one per channel)."""

    capabilities = frozenset({LOGITS})
    pretrained = True

    def __init__(
        self,
        network: nn.Module,
        input_shape: tuple[int, int, int],
        num_classes: int,
        *,
        input_range: Sequence[float] = (0.0, 1.0),
        mean: Sequence[float] = (0.0,),
        std: Sequence[float] = (1.0,),
        source: str = "the network",
    ):
        super().__init__(input_shape, num_classes)
        if len(input_range) != 2 or not input_range[0] < input_range[1]:
            raise ValueError(f"{source}: 'input_range' must be [low, high] with low < high, got {list(input_range)}")
        channels = input_shape[0]
        for name, values in (("mean", mean), ("std", std)):
            if len(values) not in (1, channels):
                raise ValueError(f"{source}: '{name}' needs 1 value or {channels} (one per channel), got {list(values)}")
        if any(s <= 0 for s in std):
            raise ValueError(f"{source}: 'std' must be positive, got {list(std)}")
        low, high = (float(v) for v in input_range)
        # (x * scale + low - mean) / std, per channel; not in the state dict: the parameters give it
        self.register_buffer("_scale", torch.tensor(high - low), persistent=False)
        self.register_buffer("_shift", _per_channel(mean, channels) - low, persistent=False)
        self.register_buffer("_std", _per_channel(std, channels), persistent=False)
        self.network = network
        self.source = source
        self._check_output()

    def fit(self, data: Dataset, ctx: TrainContext) -> None:
        """Nothing to do: the network comes trained."""

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.network((x * self._scale - self._shift) / self._std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(x)

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(x).argmax(dim=1)

    def _check_output(self) -> None:
        """One clear error when the network does not take the dataset's images in batches of any
        size or does not give one score per class, instead of a shape error inside an attack."""
        was_training = self.training
        self.eval()
        try:
            for batch in (2, 3):
                try:
                    with torch.no_grad():
                        scores = self.logits(torch.zeros(batch, *self.input_shape))
                except Exception as exc:
                    shape = ", ".join(map(str, self.input_shape))
                    raise ValueError(
                        f"{self.source} does not take the dataset's images in a batch of {batch}, ({batch}, {shape}) "
                        f"(a torch.export program needs a dynamic batch dimension): {one_line(exc)}"
                    ) from None
                if not isinstance(scores, torch.Tensor) or tuple(scores.shape) != (batch, self.num_classes):
                    found = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
                    raise ValueError(
                        f"{self.source} returns {found} for {batch} images; the dataset has {self.num_classes} "
                        f"classes, so it must return ({batch}, {self.num_classes}) class scores"
                    )
        finally:
            self.train(was_training)


def _per_channel(values: Sequence[float], channels: int) -> torch.Tensor:
    return torch.tensor([float(v) for v in values]).expand(channels).reshape(1, channels, 1, 1).clone()


class Checkpoint(PretrainedClassifier):
    """The ``checkpoint`` model: a TorchScript file or a ``torch.export`` program (``path``), or ``factory(**kwargs)`` with the
    state dict of ``weights`` loaded into it (``weights_only=True``), or ``factory`` alone."""

    def __init__(
        self,
        input_shape: tuple[int, int, int],
        num_classes: int,
        *,
        path: str,
        factory: str,
        kwargs: Mapping[str, Any],
        weights: str,
        input_range: Sequence[float],
        mean: Sequence[float],
        std: Sequence[float],
        image_shape: Sequence[int],
        classes: int,
    ):
        if bool(path) == bool(factory):
            raise ValueError(
                "checkpoint: give 'path' (a TorchScript file) or 'factory' ('package.module:build', with optional "
                "'weights'), " + ("not both" if path else "one of them")
            )
        if weights and not factory:
            raise ValueError("checkpoint: 'weights' is a state dict for the network that 'factory' builds; give 'factory'")
        if image_shape and tuple(image_shape) != tuple(input_shape):
            raise ValueError(
                f"checkpoint: the network expects images {tuple(image_shape)} (C, H, W), but the dataset's are "
                f"{tuple(input_shape)}"
            )
        if classes and classes != num_classes:
            raise ValueError(f"checkpoint: the network has {classes} classes, but the dataset has {num_classes}")
        network = _saved_program(path) if path else _built(factory, kwargs, weights)
        source = f"checkpoint '{path or factory}'"
        super().__init__(network, input_shape, num_classes, input_range=input_range, mean=mean, std=std, source=source)


def _saved_program(path: str) -> nn.Module:
    """A TorchScript file (``torch.jit.save``), or a ``.pt2`` program of ``torch.export.save``."""
    try:
        if path.endswith(".pt2"):
            return _ExportedProgram(torch.export.load(path).module())
        with warnings.catch_warnings():  # torch 2.13 deprecates TorchScript, which users still ship
            warnings.simplefilter("ignore", DeprecationWarning)
            return torch.jit.load(path, map_location="cpu")
    except (RuntimeError, ValueError, OSError) as exc:
        kind = "torch.export program that torch.export.load" if path.endswith(".pt2") else "TorchScript file that torch.jit.load"
        raise ValueError(f"{path} is not a {kind} reads: {one_line(exc)}") from None


class _ExportedProgram(nn.Module):
    """A ``torch.export`` program's module, whose graph is fixed in the mode it was exported in:
    switching it to evaluation mode (which the harness does) raises in torch, so it is not passed on."""

    def __init__(self, program: nn.Module):
        super().__init__()
        self.program = program

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.program(x)

    def train(self, mode: bool = True) -> _ExportedProgram:
        self.training = mode
        return self


def _built(factory: str, kwargs: Mapping[str, Any], weights: str) -> nn.Module:
    network = import_reference(factory)(**kwargs)
    if not isinstance(network, nn.Module):
        raise TypeError(f"checkpoint: '{factory}' returned {type(network).__name__}, not a torch.nn.Module")
    if weights:
        try:
            state = torch.load(weights, map_location="cpu", weights_only=True)
        except (RuntimeError, pickle.UnpicklingError, EOFError, OSError) as exc:
            raise ValueError(f"{weights} is not a state dict that torch.load reads with weights_only=True: {one_line(exc)}") from None
        if not isinstance(state, Mapping):
            raise ValueError(f"{weights} holds a {type(state).__name__}, not a state dict")
        try:
            network.load_state_dict(state)
        except RuntimeError as exc:
            raise ValueError(f"{weights} does not fit the network that '{factory}' builds: {one_line(exc)}") from None
    return network
