"""The SCAE plugin: the model (small preset), its heads and the four defenses."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from harness.contracts import LOGITS, Batch, TrainingSettings
from harness.leaderboard import read_leaderboard
from harness.testing import check_attack, check_defense, check_model, make_context, tiny_digits, training_state
from harness.training import make_optimizer, seed_everything
from harness_scae.defenses import (
    AdversarialDistillation,
    AdversarialTraining,
    HybridAdversarialTraining,
    PretrainedAdversarialTraining,
    distillation_loss,
)
from harness_scae.evasion import SCAEEvasion
from harness_scae.model import SCAE, KMeansHead, compose, geometric_transform, invert
from harness_scae.optim import TF1RMSprop
from harness_scae.presets import HEADS, PRESETS, resolve_config

LEADERBOARDS = Path(__file__).parents[1] / "leaderboards"
GENERATOR = {
    "name": "scae-evasion",
    "head": "posterior-linear",
    "optimizer": "sign",
    "outer": 1,
    "inner": 3,
    "eps": float("inf"),
}


@pytest.fixture(scope="module")
def data():
    return tiny_digits(n_train=120, n_test=30)


def small(data, head="posterior-kmeans", **overrides):
    return SCAE(data.input_shape, data.num_classes, preset="small", head=head, **overrides)


def test_presets_follow_the_paper_and_every_value_can_be_overridden():
    paper = PRESETS["paper"]
    assert (paper.canvas, paper.n_part_caps, paper.n_obj_caps, paper.template_size) == (40, 24, 24, 11)
    assert (paper.noise_scale, paper.cnn_channels, paper.st_layers, paper.st_heads, paper.st_dims) == (
        4.0,
        128,
        3,
        1,
        16,
    )
    assert (paper.st_output_dims, paper.optimizer, paper.lr, paper.batch_size) == (256, "TF1RMSprop", 3e-5, 100)
    assert (paper.attention_mask, paper.canvas_fit, paper.max_shift) == ("reference", "resize", 0)
    assert (paper.lr_decay, paper.lr_decay_steps) == (0.96, 10_000)
    assert resolve_config("paper", {"n_obj_caps": 10, "lr": None, "optimizer": ""}).n_obj_caps == 10
    with pytest.raises(ValueError, match="unknown SCAE preset 'huge'"):
        resolve_config("huge", {})


def test_paper_preset_trains_with_the_papers_optimizer(data):
    model = SCAE((1, 40, 40), 10, preset="paper", head="posterior-kmeans")
    settings = model.training_settings()
    optimizer = "harness_scae.optim:TF1RMSprop"
    assert settings == TrainingSettings(300, 100, 3e-5, optimizer, {"momentum": 0.9, "eps": 1e-6}, 0.96, 10_000)
    built = make_optimizer(settings, list(model.parameters()))
    assert isinstance(built, TF1RMSprop) and built.defaults["decay"] == 0.9


def test_affine_helpers_invert_and_compose():
    affine = geometric_transform(torch.randn(5, 6))
    identity = compose(affine, invert(affine))
    assert torch.allclose(identity, torch.eye(2, 3).expand(5, 2, 3), atol=1e-4)


def test_shapes_and_finite_losses(data):
    seed_everything(0)
    model = small(data).train()
    config = model.config
    encoding = model.encode(data.x_train[:7])
    assert encoding.prior.shape == encoding.posterior_sum.shape == (7, config.n_obj_caps)
    assert encoding.posterior.shape == (7, config.n_part_caps, config.n_obj_caps)
    assert encoding.image_log_likelihood.shape == encoding.part_log_likelihood.shape == (7,)
    assert ((encoding.prior >= 0) & (encoding.prior <= 1)).all()
    # each part's posterior over objects sums to at most 1 (the dummy takes the rest)
    assert (encoding.posterior.sum(dim=2) <= 1 + 1e-5).all()
    state = training_state(model, data)
    loss = model.loss(data.x_train[:7], data.y_train[:7], state)
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert state.outputs["encoding"].prior.shape == (7, config.n_obj_caps)
    loss.backward()
    for name, parameter in model.named_parameters():
        if not name.startswith("kmeans"):
            assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name


def test_gradients_reach_the_input_through_the_template_rendering(data):
    seed_everything(0)
    model = small(data).eval()
    x = data.x_test[:4].clone().requires_grad_(True)
    # a fixed target: only the rendered templates' poses (encoded from x) depend on the input
    likelihood = model.encode(x, target=data.x_test[:4]).image_log_likelihood.sum()
    (gradient,) = torch.autograd.grad(likelihood, x)
    assert gradient.abs().sum() > 0
    template_gradient = torch.autograd.grad(
        model.encode(data.x_test[:4]).image_log_likelihood.sum(), model.decoder.template_logits
    )[0]
    assert template_gradient.abs().sum() > 0


def test_reconstruction_target_comes_from_the_batch(data):
    seed_everything(0)
    model = small(data).eval()
    state = training_state(model, data)
    x, y = data.x_train[:5], data.y_train[:5]
    state.batch = Batch(x, y, torch.arange(5))
    own = model.loss(x, y, state)
    state.batch = Batch(x, y, torch.arange(5), target=torch.zeros_like(x))
    assert model.loss(x, y, state) != own


def test_noise_is_on_only_in_training_and_can_be_switched_off(data):
    seed_everything(0)
    model = small(data)
    x = data.x_test[:3]
    model.eval()
    assert torch.equal(model.capsule_presences(x), model.capsule_presences(x))
    model.train()
    assert not torch.equal(model.capsule_presences(x), model.capsule_presences(x))
    model.set_noise(False)
    assert torch.equal(model.capsule_presences(x), model.capsule_presences(x))


@pytest.mark.parametrize("head", HEADS)
def test_each_head_passes_the_contract_kit(data, head):
    model = check_model(lambda: small(data, head=head, epochs=1), data)
    assert (LOGITS in model.capabilities) == head.endswith("linear")
    assert model.head_modules() == [model.kmeans]  # the backbone's state is the same for every head
    with torch.no_grad():
        presences = model.capsule_presences(data.x_test, head.partition("-")[0])
    assert torch.equal(model.predict(data.x_test), model.classify_presences(presences))


@pytest.mark.parametrize("head", ["posterior-kmeans", "prior-linear"])
def test_the_evasion_attack_passes_the_contract_kit_on_the_scae(data, head):
    model = small(data, head=head, epochs=1)
    model.fit(data, make_context())
    model.fit_head(data, make_context())
    check_attack(SCAEEvasion(outer=2, inner=3), model.eval(), data.x_test[:6], data.y_test[:6])


def test_kmeans_head_matches_clusters_to_labels_with_the_hungarian_algorithm():
    # three well separated directions, whose clusters come out in some order; labels permuted
    directions = torch.eye(3)
    features = torch.cat([directions[i].repeat(20, 1) + 0.01 * torch.rand(20, 3) for i in range(3)])
    labels = torch.tensor([2] * 20 + [0] * 20 + [1] * 20)
    head = KMeansHead(3, 3)
    head.fit(features, labels, 3, seed=0)
    assert torch.equal(head(features), labels)
    # cosine geometry: scaling a feature vector does not change its cluster
    assert torch.equal(head(features * 5), labels)


def test_kmeans_head_with_more_clusters_than_matched_labels_votes_by_majority():
    features = torch.cat([torch.eye(4)[i].repeat(10, 1) for i in range(4)])
    labels = torch.tensor([0] * 10 + [0] * 10 + [1] * 10 + [1] * 10)
    head = KMeansHead(4, 4)
    head.fit(features, labels, 2, seed=0)
    assert torch.equal(head(features), labels)


def test_distillation_loss_is_zero_when_the_student_is_the_teacher(data):
    seed_everything(0)
    model = small(data).eval()
    encoding = model.encode(data.x_test[:6], render=False)
    assert distillation_loss(encoding, encoding).item() == 0.0
    other = small(data).eval().encode(data.x_test[:6], render=False)
    expected = 0.5 * (
        (encoding.prior - other.prior).square().sum() + (encoding.posterior - other.posterior).square().sum()
    )
    assert torch.allclose(distillation_loss(encoding, other), expected)


def test_hat_phases_split_the_epochs_and_batches_alternate(data):
    defense = HybridAdversarialTraining(
        attack=GENERATOR, interval=1, distill_epochs=None, train_epochs=3, weight=0.5, noise=False
    )
    model = small(data, epochs=4)
    defense.phases = (("distill", 2), ("train", 3))
    defense.schedule = list(defense.phases)
    assert [defense.phase(e) for e in range(5)] == ["distill", "distill", "train", "train", "train"]
    assert model.training_settings().epochs == 4


DEFENSES = {
    "at-scae": lambda: AdversarialTraining(attack=GENERATOR, interval=1, epochs=1, noise=False),
    "ad-scae": lambda: AdversarialDistillation(attack=GENERATOR, interval=1, epochs=1, weight=0.5, noise=False),
    "hat-scae": lambda: HybridAdversarialTraining(
        attack=GENERATOR, interval=1, distill_epochs=1, train_epochs=1, weight=0.5, noise=False
    ),
    "ntat-scae": lambda: PretrainedAdversarialTraining(attack=GENERATOR, interval=1, epochs=1, noise=False),
}


@pytest.mark.parametrize("name", DEFENSES)
def test_each_defense_passes_the_contract_kit(data, name):
    def build():
        return small(data, head="posterior-linear", epochs=1)

    def teacher():
        seed_everything(1)
        model = build()
        model.fit(data, make_context(1))
        return model.eval()

    trained = check_defense(DEFENSES[name](), build, data, ctx=make_context(0, teacher=teacher))
    assert trained.part_encoder.noise_enabled, "the noise switch is restored after training"


def test_adversarial_batches_reconstruct_the_clean_image_in_at_and_their_own_input_in_ad(data, monkeypatch):
    seen = {}
    for name in ("at-scae", "ad-scae"):
        defense = DEFENSES[name]()
        defense.schedule = list(defense.phases)
        defense.batches = 0
        defense.generator = lambda model, x, y: (x + 0.1).clamp(0, 1)
        state = training_state(small(data), data)
        batch = Batch(data.x_train[:4], data.y_train[:4], torch.arange(4))
        assert defense.prepare_batch(state, batch) is batch  # the first batch is clean (interval 1)
        seen[name] = defense.prepare_batch(state, batch)
    assert torch.equal(seen["at-scae"].target, data.x_train[:4])
    assert seen["ad-scae"].target is None
    assert not torch.equal(seen["ad-scae"].x, data.x_train[:4])


def test_ntat_starts_from_the_teachers_weights(data):
    teacher = small(data, epochs=1)
    defense = PretrainedAdversarialTraining(attack=GENERATOR, interval=1, epochs=1, noise=False)
    defense.schedule = [("train", 1)]
    student = small(data, epochs=1)
    ctx = make_context(0, teacher=lambda: teacher)
    state = training_state(student, data, ctx)
    defense.training_started(state)
    for (name, mine), theirs in zip(student.state_dict().items(), teacher.state_dict().values()):
        assert torch.equal(mine, theirs), name
    assert not student.part_encoder.noise_enabled


@pytest.mark.slow
def test_small_scae_suite_runs_and_reuses_its_models(cli, tmp_path):
    """The CI suite: every defense trains a small SCAE once; a second run loads all from the cache."""
    suite = LEADERBOARDS / "scae-small.toml"
    output = tmp_path / "scae-small.csv"
    code, _, err = cli("run", suite, "--output", output)
    assert code == 0, err
    rows = read_leaderboard(output)
    # a k-means head has no differentiable scores: PGD skips it; everything else runs
    gradient_free = (rows["attack"] == "pgd") & (rows["model"] == "scae-posk")
    assert set(rows[gradient_free]["status"]) == {"skipped"}
    assert set(rows[~gradient_free]["status"]) == {"ok"}, rows[rows["status"] == "error"]["message"].tolist()
    assert set(rows["defense"]) == {"none", "at-scae", "ad-scae", "hat-scae", "ntat-scae"}
    assert np.isfinite(rows[~gradient_free]["clean_accuracy"]).all()
    code, _, err = cli("run", suite, "--output", tmp_path / "again.csv", "--force")
    assert code == 0, err
    again = read_leaderboard(tmp_path / "again.csv")
    # every model came from the cache: the recorded training times are the first run's
    assert again["train_seconds"].equals(rows["train_seconds"])


def test_a_longer_training_continues_the_shorter_ones_checkpoint_to_the_same_weights(data, tmp_path):
    """What the learning curves rely on: the SCAE's epochs are a horizon (its noise, shuffling and
    optimiser state are all restored), here with TF1's RMSProp and a decay every 3 steps."""
    from harness.cache import ArtifactCache
    from harness.resume import TrainingCheckpoints
    from harness.training import fit

    def trained(epochs, cache_dir):
        seed_everything(0)
        model = small(data, epochs=epochs, optimizer="TF1RMSprop", lr=1e-3, lr_decay=0.5, lr_decay_steps=3)
        store = TrainingCheckpoints(ArtifactCache(cache_dir, pytest.fail), "scae", {}, 0.0, keep_final=True)
        fit(model, data, make_context(), checkpoints=store)
        return model

    fresh = trained(4, tmp_path / "fresh")
    trained(2, tmp_path / "chain")
    continued = trained(4, tmp_path / "chain")
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), continued.state_dict().values()))
