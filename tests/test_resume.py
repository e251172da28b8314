"""Resumable trainings: a killed training resumed from its checkpoint ends with the weights of an
uninterrupted one, and a model's longer training continues from a shorter one's end."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from harness import api
from harness.cache import ArtifactCache
from harness.plan import plan_run, render_plan
from harness.plugins import load_plugins
from harness.suite import parse_suite
from harness.contracts import Batch, Model, TrainingHooks, TrainingSettings, TrainingState
from harness.resume import KIND, TrainingCheckpoints, join_tensors, split_tensors
from harness.testing import make_context, tiny_digits
from harness.training import fit, make_optimizer, seed_everything


class DropoutNet(Model):
    """Dropout and a learning rate halved every second epoch: both must be restored to resume exactly."""

    def __init__(self, epochs: int = 4):
        super().__init__((1, 8, 8), 10)
        self.layers = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 10))
        self.epochs = epochs

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(x).argmax(dim=1)

    def training_settings(self) -> TrainingSettings:
        return TrainingSettings(self.epochs, 32, 1e-2, "SGD", {"momentum": 0.9}, lr_decay=0.5, lr_decay_epochs=2)

    def loss(self, x: torch.Tensor, y: torch.Tensor, state: TrainingState) -> torch.Tensor:
        return F.cross_entropy(self.logits(x), y)


class Interrupted(Exception):
    pass


class NoisyHook(TrainingHooks):
    """Changes the training split after each epoch and noises batches from its own generator and
    a tracked one, counting batches in its state: everything a resumed loop must restore. With
    ``stop_at`` it stops the training at that epoch's start, as a killed run would."""

    def __init__(self, generator: torch.Generator, stop_at: int | None = None):
        self.generator, self.stop_at = generator, stop_at
        self.batches = 0
        self.epochs_run: list[int] = []

    def epoch_started(self, state: TrainingState) -> None:
        if state.epoch == self.stop_at:
            raise Interrupted
        self.epochs_run.append(state.epoch)

    def prepare_batch(self, state: TrainingState, batch: Batch) -> Batch:
        self.batches += 1
        noise = torch.randn(batch.x.shape, generator=self.generator) * 0.05 + torch.rand(()) * 0.01
        return dataclasses.replace(batch, x=batch.x + noise)

    def epoch_finished(self, state: TrainingState) -> None:
        state.x_train = state.x_train * 0.99 + 0.01 * torch.rand(state.x_train.shape)

    def state_dict(self) -> dict:
        return {"batches": self.batches}

    def load_state_dict(self, state: dict) -> None:
        self.batches = state["batches"]


def train(cache_dir, epochs=4, stop_at=None, interval=0.0, checkpoints=True):
    """The model trained from seed 0 (a fresh process: fresh model, context and hook)."""
    data = tiny_digits(n_train=160, n_test=20)
    seed_everything(0)
    model = DropoutNet(epochs)
    store = None
    if checkpoints:
        store = TrainingCheckpoints(ArtifactCache(cache_dir, warn=pytest.fail), "training", {"t": 1}, interval,
                                    keep_final=True)  # fmt: skip
    generator = torch.Generator().manual_seed(7)
    if store is not None:
        store.track(generator)
    hook = NoisyHook(generator, stop_at)
    fit(model, data, make_context(), [hook], checkpoints=store)
    return model, hook, store


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_a_killed_training_resumes_to_the_same_weights(tmp_path):
    plain, plain_hook, _ = train(tmp_path / "plain", checkpoints=False)
    uninterrupted, _, _ = train(tmp_path / "whole")
    assert same_weights(plain, uninterrupted)  # checkpointing does not change the training
    with pytest.raises(Interrupted):
        train(tmp_path / "killed", stop_at=1)  # the schedule's next decay is after epoch 1
    resumed, hook, store = train(tmp_path / "killed")
    assert hook.epochs_run == [1, 2, 3]  # from the epoch the kill cut
    assert hook.batches == plain_hook.batches
    assert same_weights(resumed, uninterrupted)
    assert store.resumed_seconds > 0
    # the periodic checkpoints gave way to newer ones; the final one is kept
    assert [key.split("-", 1)[1] for key in ArtifactCache(tmp_path / "killed", print).keys(KIND, "")] == ["0-e4-final"]


def test_without_a_checkpoint_to_resume_the_training_restarts(tmp_path):
    uninterrupted, _, _ = train(tmp_path / "whole")
    with pytest.raises(Interrupted):
        train(tmp_path / "killed", stop_at=3, interval=3600.0)  # no checkpoint before the kill
    resumed, hook, _ = train(tmp_path / "killed")
    assert hook.epochs_run == [0, 1, 2, 3]
    assert same_weights(resumed, uninterrupted)


def test_a_longer_training_continues_from_a_shorter_ones_end(tmp_path):
    fresh, _, _ = train(tmp_path / "fresh", epochs=4)
    train(tmp_path / "chain", epochs=2)
    continued, hook, _ = train(tmp_path / "chain", epochs=4)
    assert hook.epochs_run == [2, 3]
    assert same_weights(continued, fresh)
    shorter, hook, _ = train(tmp_path / "chain", epochs=1)  # a shorter one cannot use a longer one's end
    assert hook.epochs_run == [0]


def test_a_damaged_checkpoint_is_reported_and_the_training_restarts(tmp_path):
    with pytest.raises(Interrupted):
        train(tmp_path / "killed", epochs=4, stop_at=3)
    cache = ArtifactCache(tmp_path / "killed", print)
    (key,) = cache.keys(KIND, "")
    path = cache.path(KIND, key)
    path.write_bytes(path.read_bytes()[:-50])
    warnings = []
    data = tiny_digits(n_train=160, n_test=20)
    seed_everything(0)
    model = DropoutNet(4)
    store = TrainingCheckpoints(ArtifactCache(tmp_path / "killed", warnings.append), "training", {"t": 1}, 0.0)
    hook = NoisyHook(store.track(torch.Generator().manual_seed(7)))
    fit(model, data, make_context(), [hook], checkpoints=store)
    assert hook.epochs_run == [0, 1, 2, 3]
    assert len(warnings) == 1 and "unusable" in warnings[0]


def test_an_optimizer_named_by_reference(tmp_path):
    settings = TrainingSettings(1, 8, 0.1, "torch.optim:SGD", {"momentum": 0.5})
    optimizer = make_optimizer(settings, [nn.Parameter(torch.zeros(2))])
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.defaults["momentum"] == 0.5
    with pytest.raises(ValueError, match="optimizer 'no_such_module:SGD': cannot import no_such_module"):
        make_optimizer(dataclasses.replace(settings, optimizer="no_such_module:SGD"), [])
    for name in ("torch.optim:NoSuch", "torch.nn:Linear"):
        with pytest.raises(ValueError, match=f"unknown optimizer '{name}'"):
            make_optimizer(dataclasses.replace(settings, optimizer=name), [])


def test_split_and_join_tensors_round_trip():
    value = {"a": torch.arange(3), "b": [1, 2.5, None, (torch.ones(2), "x")], "c": {"d": True}}
    tensors: dict = {}
    skeleton = split_tensors(value, "v", tensors)
    joined = join_tensors(skeleton, tensors)
    assert set(tensors) == {"v/a", "v/b/3/0"}
    assert torch.equal(joined["a"], value["a"]) and joined["b"][:3] == [1, 2.5, None]
    assert isinstance(joined["b"][3], tuple) and joined["c"] == {"d": True}


SUITE = {
    "name": "horizon",
    "seeds": [0],
    "n_samples": 20,
    "datasets": [{"name": "digits", "test_size": 100}],
    "models": [{"name": "mlp", "hidden": [16], "epochs": 2}],
    "attacks": [{"name": "fgsm", "eps": [0.1]}],
}


def test_the_runner_continues_a_models_longer_training_from_the_shorter_ones_end(tmp_path):
    longer = {**SUITE, "models": [{**SUITE["models"][0], "epochs": 4}]}
    fresh = api.run(longer, cache_dir=tmp_path / "fresh", device="cpu", threads=1)
    api.run(SUITE, cache_dir=tmp_path / "chain", device="cpu", threads=1)
    finals = ArtifactCache(tmp_path / "chain", print).keys(KIND, "")
    assert [key.split("-", 1)[1] for key in finals] == ["0-e2-final"]
    suite = parse_suite(longer, tmp_path / "longer.toml", load_plugins())
    plan = plan_run(suite, tmp_path / "longer.csv", tmp_path / "chain")
    assert [t.checkpointed for t in plan.trainings] == [True] and "continue  digits" in render_plan(plan)
    continued = api.run(longer, cache_dir=tmp_path / "chain", device="cpu", threads=1)
    assert sorted(key.split("-", 1)[1] for key in ArtifactCache(tmp_path / "chain", print).keys(KIND, "")) == [
        "0-e2-final", "0-e4-final",
    ]
    columns = ["clean_accuracy", "robust_accuracy", "cell_id"]
    assert continued[columns].equals(fresh[columns])
    (fresh_model,) = (tmp_path / "fresh" / "models").glob("*.pt")
    fresh_weights = torch.load(fresh_model, weights_only=True)["tensors"]
    continued_weights = torch.load(tmp_path / "chain" / "models" / fresh_model.name, weights_only=True)["tensors"]
    assert all(torch.equal(continued_weights[k], v) for k, v in fresh_weights.items())
