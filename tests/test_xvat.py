"""The xVAT plugin: the hard-concrete mask, the mask's ascent, the VAT direction, the label budget,
the defenses on tiny models, the mask-erasure attack and the seconds-per-epoch metric."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from harness.contracts import Batch, TrainingSettings
from harness.leaderboard import read_leaderboard
from harness.testing import (
    check_attack,
    check_defense,
    check_metric,
    check_model,
    make_context,
    outcome_of,
    reference_builder,
    reference_classifier,
    tiny_digits,
    training_state,
)
from harness.training import seed_everything
from harness_xvat.attacks import MaskErasure
from harness_xvat.defenses import (
    AdversarialTraining,
    MultiplicativeAdversarialTraining,
    MultiplicativeVirtualAdversarialTraining,
    PlainTraining,
    VirtualAdversarialTraining,
)
from harness_xvat.divergence import (
    batch_stats_frozen,
    kl_divergence,
    normalised,
    reestimate_batch_stats,
    virtual_adversarial_direction,
)
from harness_xvat.loop import CLOCK, balanced_labels
from harness_xvat.masks import ExampleLogAlpha, HardConcrete, MaskGenerator, apply_mask
from harness_xvat.metrics import SecondsPerEpoch
from harness_xvat.models import BatchNormMLP

LEADERBOARDS = Path(__file__).parents[1] / "leaderboards"
BUDGET = {"labels": 0, "labeled_batch_size": 16, "unlabeled_batch_size": 32, "epochs": None, "batch_stats": "pool"}
MASK = {"mode": "inductive", "l0_weight": 1.0, "lr_a": None, "gamma": -0.1, "zeta": 1.1, "beta": 0.66, "center": 0.5}


@pytest.fixture(scope="module")
def data():
    return tiny_digits(n_train=200, n_test=40)


def tiny_mlp(data, epochs: int = 2) -> BatchNormMLP:
    return BatchNormMLP(
        data.input_shape, data.num_classes, hidden=[32, 16], affine=False, output_norm=False, lr_decay=0.9,
        epochs=epochs, batch_size=32, lr=1e-3,
    )


# --- the hard-concrete mask -------------------------------------------------------------------


def test_mask_lies_in_unit_interval_and_is_exactly_zero_or_one_with_positive_probability():
    concrete = HardConcrete()
    mask = concrete.sample(torch.zeros(20_000), torch.Generator().manual_seed(0))
    assert mask.min() >= 0 and mask.max() <= 1
    exactly_zero, exactly_one = (mask == 0).float().mean().item(), (mask == 1).float().mean().item()
    # with log-alpha 0 the stretched sigmoid leaves [0, 1] on both sides with probability
    # sigmoid(beta * log(-gamma / zeta)), about 0.17 each
    assert exactly_zero == pytest.approx(exactly_one, abs=0.02)
    assert 0.13 < exactly_zero < 0.21
    assert 0 < ((mask > 0) & (mask < 1)).float().mean().item() < 1


def test_l0_term_is_the_probability_of_a_nonzero_mask_and_grows_with_log_alpha():
    concrete = HardConcrete()
    log_alphas = torch.linspace(-6, 6, 25)
    l0 = torch.stack([concrete.l0(value.expand(4, 1, 3, 3)) for value in log_alphas])
    assert (l0.diff() > 0).all()
    for value in (-2.0, 0.0, 2.0):
        sampled = concrete.sample(torch.full((40_000,), value), torch.Generator().manual_seed(1))
        expected = concrete.l0(torch.tensor([value])).item()
        assert (sampled != 0).float().mean().item() == pytest.approx(expected, abs=0.01)


def test_mask_mode_is_deterministic_and_parameters_are_checked():
    concrete = HardConcrete()
    log_alpha = torch.tensor([-10.0, 0.0, 10.0])
    assert torch.equal(concrete.mode(log_alpha), concrete.mode(log_alpha))
    assert concrete.mode(log_alpha)[0] == 0 and concrete.mode(log_alpha)[2] == 1
    # by hand: sigmoid(0.5 / beta), stretched from [0, 1] to [gamma, zeta]
    assert concrete.mode(torch.tensor([0.5])).item() == pytest.approx(1.2 / (1 + math.exp(-0.5 / 0.66)) - 0.1)
    for bad in ({"gamma": 0.1}, {"gamma": 0.0}, {"zeta": 1.0}, {"beta": 0.0}):
        with pytest.raises(ValueError, match="gamma < 0"):
            HardConcrete(**bad)


def test_the_transductive_table_is_drawn_from_its_generator():
    tables = [ExampleLogAlpha(5, 4, 4, torch.Generator().manual_seed(seed)).table for seed in (3, 3, 4)]
    assert torch.equal(tables[0], tables[1]) and not torch.equal(tables[0], tables[2])


def test_a_mask_scales_around_center_on_every_channel():
    x = torch.rand(2, 3, 4, 4)
    mask = torch.zeros(2, 1, 4, 4)
    mask[:, :, 0, 0] = 1
    masked = apply_mask(x, mask, eps=2.0, center=0.5)
    assert torch.allclose(masked[:, :, 0, 0], 0.5 + 2 * (x[:, :, 0, 0] - 0.5))
    assert (masked[:, :, 1:, :] == 0.5).all()
    generator = MaskGenerator(3)
    assert generator(x).shape == (2, 1, 4, 4) and (generator.conv.bias == 0).all()


# --- the mask's ascent --------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["inductive", "transductive"])
def test_the_mask_is_updated_by_ascent_on_the_regulariser(data, mode):
    """One loop step: the classifier descends, the mask's parameters ascend on weight * KL + l0_weight * L0."""
    seed_everything(0)
    model = tiny_mlp(data)
    options = {**MASK, "mode": mode, "lr_a": 0.05}
    defense = MultiplicativeVirtualAdversarialTraining(eps=2.0, weight=1.0, **options, **BUDGET)
    model = defense.prepare(model)
    state = training_state(model, data)
    defense.training_started(state)
    model.train()
    batch = defense.prepare_batch(state, Batch(data.x_train[:32], data.y_train[:32], torch.arange(32)))

    def regulariser(noise_seed: int) -> torch.Tensor:
        defense.random.manual_seed(noise_seed)
        return defense.regularise(state, batch, batch, torch.zeros(()))

    before = [p.detach().clone() for p in defense.log_alpha.parameters()]
    reg = regulariser(7)
    reg.backward()
    gradients = [p.grad.clone() for p in defense.log_alpha.parameters()]
    with torch.no_grad():
        value_before = regulariser(7).item()
    defense.prepare_batch(state, batch)  # the next step's first act: the pending ascent step
    after = [p.detach() for p in defense.log_alpha.parameters()]
    for old, new, gradient in zip(before, after, gradients):
        moved = gradient != 0
        assert moved.any()
        # Adam's first step moves every coordinate by lr along the sign of the (ascent) gradient
        assert ((new - old)[moved] * gradient[moved] > 0).all()
        assert all(p.grad is None for p in defense.log_alpha.parameters())
    with torch.no_grad():
        assert regulariser(7).item() > value_before


def test_the_reference_xat_quirk_is_reproduced_with_lr_a_zero(data):
    seed_everything(0)
    defense = MultiplicativeAdversarialTraining(distance="kl", eps=1.0, weight=0.5, **{**MASK, "lr_a": 0.0}, **BUDGET)
    model = defense.prepare(tiny_mlp(data, epochs=1))
    captured = {}
    original = defense.training_started

    def keep_generator(state):
        original(state)
        captured["start"] = [p.detach().clone() for p in defense.log_alpha.parameters()]

    defense.training_started = keep_generator
    defense.train(model, data, make_context(0))
    assert defense.ascent is None
    assert all(torch.equal(a, b) for a, b in zip(captured["start"], defense.log_alpha.parameters()))


# --- VAT ------------------------------------------------------------------------------------------


def test_vat_direction_matches_a_finite_difference_gradient_of_the_kl():
    """One power iteration is the normalised gradient of KL(p(x) || p(x + r)) at r = xi * d0."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    x = torch.rand(5, 1, 2, 3, dtype=torch.float64)
    log_p = torch.log_softmax(net(x), dim=1).detach()
    xi = 1e-3
    direction = virtual_adversarial_direction(net, x, log_p, xi, 1, torch.Generator().manual_seed(3))
    start = xi * normalised(torch.randn(x.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64))

    def kl_at(r: torch.Tensor) -> torch.Tensor:
        return kl_divergence(log_p, torch.log_softmax(net(x + r), dim=1))

    h = 1e-7
    numeric = torch.zeros_like(x)
    for index in np.ndindex(*x.shape[1:]):
        step = torch.zeros_like(x)
        step[(slice(None), *index)] = h
        numeric[(slice(None), *index)] = (kl_at(start + step) - kl_at(start - step)) / (2 * h)
    expected = numeric / numeric.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    cosine = (direction.flatten(1) * expected.flatten(1)).sum(dim=1) / direction.flatten(1).norm(dim=1)
    assert (cosine > 0.9999).all(), cosine
    assert torch.allclose(direction.flatten(1).norm(dim=1), torch.ones(5, dtype=torch.float64), atol=1e-5)


def test_power_iterations_find_the_direction_the_kl_grows_fastest():
    """Many iterations converge to the top eigenvector of the KL's Hessian: its KL at a small
    radius beats random directions'."""
    torch.manual_seed(1)
    net = nn.Sequential(nn.Flatten(), nn.Linear(6, 10), nn.Tanh(), nn.Linear(10, 4)).double()
    x = torch.rand(3, 1, 2, 3, dtype=torch.float64)
    log_p = torch.log_softmax(net(x), dim=1).detach()
    d = virtual_adversarial_direction(net, x, log_p, 1e-4, 30, torch.Generator().manual_seed(0))
    radius = 1e-2

    def kl_along(direction):
        return kl_divergence(log_p, torch.log_softmax(net(x + radius * direction), dim=1))

    best = kl_along(d)
    for seed in range(50):
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(100 + seed), dtype=torch.float64)
        random = normalised(noise)
        assert (kl_along(random) <= best * (1 + 1e-6)).all()


def exact_direction_by_hand(net: nn.Module, x: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
    """One power iteration in float64, written out: H d for the KL's Hessian H at r = 0, normalised."""
    net, x = copy.deepcopy(net).double(), x.double()
    with torch.no_grad():
        log_p = torch.log_softmax(net(x), dim=1)
    r = torch.zeros_like(x, requires_grad=True)
    (slope,) = torch.autograd.grad(kl_divergence(log_p, torch.log_softmax(net(x + r), dim=1)).mean(), r,
                                   create_graph=True)
    (product,) = torch.autograd.grad((slope * normalised(start.double())).sum(), r)
    return normalised(product).flatten(1)


def test_the_exact_direction_survives_float32_where_a_finite_difference_of_1e_6_does_not():
    """xi = 0 (the default) is the Hessian product itself; a float32 finite difference of 1e-6 falls
    below the logits' rounding and comes out at random angles to it (the official code's 1e-6
    assumed Theano's float64)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 10))
    x = torch.rand(20, 1, 8, 8)
    with torch.no_grad():
        log_p = torch.log_softmax(net(x), dim=1)
    start = torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    expected = exact_direction_by_hand(net, x, start)

    def cosines(xi: float) -> torch.Tensor:
        found = virtual_adversarial_direction(net, x, log_p, xi, 1, torch.Generator().manual_seed(3))
        assert found.dtype == torch.float32 and torch.allclose(found.flatten(1).norm(dim=1), torch.ones(20), atol=1e-5)
        return nn.functional.cosine_similarity(found.flatten(1).double(), expected, dim=1)

    assert (cosines(0.0) > 0.99999).all()
    assert (cosines(1e-3) > 0.999).all()  # a float32-sized difference agrees with it
    assert cosines(1e-6).min() < 0.5  # the official 1e-6 in float32 does not


def test_exact_power_iterations_equal_float64_finite_differences():
    torch.manual_seed(2)
    net = nn.Sequential(nn.Flatten(), nn.Linear(6, 10), nn.Tanh(), nn.Linear(10, 4)).double()
    x = torch.rand(3, 1, 2, 3, dtype=torch.float64)
    log_p = torch.log_softmax(net(x), dim=1).detach()
    exact = {}
    for iterations in (1, 3):
        start = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
        exact[iterations] = virtual_adversarial_direction(net, x, log_p, 0.0, iterations, start[0])
        finite = virtual_adversarial_direction(net, x, log_p, 1e-7, iterations, start[1])
        assert torch.allclose(exact[iterations], finite, atol=1e-5)
    assert not torch.allclose(exact[1], exact[3], atol=1e-3)  # more iterations move it


def reference_vat_cost(model: nn.Module, x_l, y_l, x_ul, start, eps: float, xi: float) -> torch.Tensor:
    """The cost of the official VAT (takerum/vat, ``train_mnist_semisup.py --cost_type=VAT_finite_diff``)
    on one step, written from its Theano graph (read, not run): the labelled cross-entropy, batch
    statistics updated; then on the unlabelled batch, statistics not updated (here: momentum 0),
    d = xi * normalise(start), Hd = the gradient in d of mean CE(p(x), p(x + d)) / xi, r = eps *
    normalise(Hd) held fixed, and mean CE(p(x), p(x + r)) with p(x) held fixed. Its ``normalise``
    divides by 1e-20 + the largest entry, then by sqrt(1e-6 + the squared norm)."""

    def normalise(v):
        v = v / (1e-20 + v.flatten(1).abs().amax(1).view(-1, 1, 1, 1))
        return v / torch.sqrt(1e-6 + v.flatten(1).square().sum(1)).view(-1, 1, 1, 1)

    def cross_entropy(p, q):
        return -(p * q.log()).sum(1)

    cost = -torch.log(torch.softmax(model(x_l), 1))[torch.arange(len(y_l)), y_l].mean()
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm1d)]
    momenta = [norm.momentum for norm in norms]
    for norm in norms:
        norm.momentum = 0.0
    y = torch.softmax(model(x_ul), 1)
    d = (xi * normalise(start)).requires_grad_()
    (hd,) = torch.autograd.grad(cross_entropy(y, torch.softmax(model(x_ul + d), 1)).mean(), d)
    r = eps * normalise(hd / xi)
    cost = cost + cross_entropy(y.detach(), torch.softmax(model(x_ul + r), 1)).mean()
    for norm, momentum in zip(norms, momenta):
        norm.momentum = momentum
    return cost


def test_one_vat_step_is_the_official_codes_on_the_same_batch_and_weights(data):
    """Issue 17's one-step comparison, kept: from the same weights, batches and random start, our
    VAT loss has the official cost's gradient in every weight (the values differ by p's entropy,
    a constant), and leaves the same running statistics (only the labelled batch's)."""
    seed_everything(0)
    model = BatchNormMLP(data.input_shape, data.num_classes, hidden=[32, 16], affine=True, output_norm=True,
                         lr_decay=1.0, epochs=1, batch_size=16, lr=1e-3).double().train()
    x_l, y_l, x_ul = data.x_train[:16].double(), data.y_train[:16], data.x_train[16:48].double()
    ours, official = copy.deepcopy(model), copy.deepcopy(model)
    start = torch.randn(x_ul.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    expected = reference_vat_cost(official, x_l, y_l, x_ul, start, eps=0.3, xi=1e-6)
    vat = VirtualAdversarialTraining(eps=0.3, xi=1e-6, iterations=1, weight=1.0, **BUDGET)
    vat.random = torch.Generator().manual_seed(5)
    state = training_state(ours, data)
    loss = ours.loss(x_l, y_l, state)
    found = vat.regularise(state, Batch(x_l, y_l, torch.arange(16)), Batch(x_ul, y_l, torch.arange(32)), loss)
    statistics = [(name, buffer) for name, buffer in ours.named_buffers() if name.endswith(("_mean", "_var"))]
    for name, buffer in statistics:
        assert torch.equal(buffer, official.get_buffer(name))
    with torch.no_grad(), batch_stats_frozen(ours):
        p = torch.softmax(ours(x_ul), 1)
    entropy = -(p * p.log()).sum(1).mean()
    assert found.item() == pytest.approx(expected.item() - entropy.item(), rel=1e-9)
    ours_grads = torch.autograd.grad(found, list(ours.parameters()))
    official_grads = torch.autograd.grad(expected, list(official.parameters()))
    for a, b in zip(ours_grads, official_grads):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-9)  # 2e-11 apart: the arithmetic of the difference
    # the exact product (our default) takes the same step, to the finite difference's accuracy
    exact = VirtualAdversarialTraining(eps=0.3, xi=0.0, iterations=1, weight=1.0, **BUDGET)
    exact.random = torch.Generator().manual_seed(5)
    again = copy.deepcopy(model)
    state = training_state(again, data)
    value = exact.regularise(state, None, Batch(x_ul, y_l, torch.arange(32)), again.loss(x_l, y_l, state))
    assert value.item() == pytest.approx(found.item(), rel=1e-6)
    for a, b in zip(torch.autograd.grad(value, list(again.parameters())), official_grads):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)  # 8e-8 apart at most


def test_regulariser_forwards_leave_the_batch_norm_statistics_alone(data):
    seed_everything(0)
    model = tiny_mlp(data).train()
    norm = model.net[2]
    running = norm.running_mean.clone(), norm.running_var.clone(), norm.num_batches_tracked.clone()
    with batch_stats_frozen(model):
        model.logits(data.x_train[:32])
    after = norm.running_mean, norm.running_var, norm.num_batches_tracked
    assert all(torch.equal(a, b) for a, b in zip(running, after))
    assert norm.track_running_stats
    model.logits(data.x_train[:32])
    assert not torch.equal(running[0], norm.running_mean)


def test_batch_stats_are_re_estimated_as_the_pools_mean_and_variance(data):
    """The first batch norm's statistics after re-estimation are the pool's: the mean of its
    inputs exactly, the variance as the size-weighted average of the (unbiased) per-batch ones."""
    seed_everything(0)
    model = tiny_mlp(data).train()
    model.logits(data.x_train[:32])  # running statistics that are not the pool's
    norm = model.net[2]
    momentum = norm.momentum
    x = data.x_train[:150]  # batches of 64, 64 and 22
    reestimate_batch_stats(model, model.logits, x, batch_size=64)
    with torch.no_grad():
        pre = model.net[1](model.net[0](x))
    assert torch.allclose(norm.running_mean, pre.mean(dim=0), atol=1e-5)
    per_batch = sum(len(chunk) * chunk.var(dim=0) for chunk in pre.split(64)) / len(x)
    assert torch.allclose(norm.running_var, per_batch, rtol=1e-4, atol=1e-6)
    assert norm.momentum == momentum and model.training


@pytest.mark.parametrize("batch_stats", ["pool", "running"])
def test_defenses_test_with_the_pools_statistics_unless_asked_for_the_running_ones(data, batch_stats):
    seed_everything(0)
    defense = PlainTraining(**{**BUDGET, "batch_stats": batch_stats})
    model = defense.prepare(tiny_mlp(data))
    defense.train(model, data, make_context(0))
    norm = model.net[2]
    with torch.no_grad():
        pool_mean = model.net[1](model.net[0](data.x_train)).mean(dim=0)
    close = torch.allclose(norm.running_mean, pool_mean, atol=1e-4)
    assert close == (batch_stats == "pool")
    with pytest.raises(ValueError, match="batch_stats"):
        PlainTraining(**{**BUDGET, "batch_stats": "test"})


# --- the label budget ---------------------------------------------------------------------------


def test_semi_supervised_split_keeps_exactly_n_labels_balanced_and_fixed_per_seed(data):
    chosen = balanced_labels(data.y_train, 50, 10, seed=3)
    assert len(chosen) == 50 and len(set(chosen.tolist())) == 50
    assert torch.bincount(data.y_train[chosen], minlength=10).tolist() == [5] * 10
    assert torch.equal(chosen, balanced_labels(data.y_train, 50, 10, seed=3))
    assert not torch.equal(chosen, balanced_labels(data.y_train, 50, 10, seed=4))
    uneven = torch.bincount(data.y_train[balanced_labels(data.y_train, 23, 10, seed=0)], minlength=10)
    assert uneven.sum() == 23 and uneven.max() - uneven.min() == 1
    with pytest.raises(ValueError, match="at least the number of classes"):
        balanced_labels(data.y_train, 5, 10, seed=0)
    with pytest.raises(ValueError, match="examples of class"):
        balanced_labels(data.y_train, 1000, 10, seed=0)


def test_with_a_label_budget_the_model_loss_sees_only_the_kept_labels_and_the_regulariser_the_pool(data):
    class Spy(BatchNormMLP):
        seen: list[torch.Tensor] = []

        def loss(self, x, y, state):
            Spy.seen.append(state.batch.index.clone())
            return super().loss(x, y, state)

    defense = VirtualAdversarialTraining(eps=0.3, xi=1e-6, iterations=1, weight=1.0, **{**BUDGET, "labels": 20})
    pool_batches = []
    original = defense.regularise

    def spy_regularise(state, labeled, unlabeled, loss):
        pool_batches.append(unlabeled.index.clone())
        return original(state, labeled, unlabeled, loss)

    defense.regularise = spy_regularise
    seed_everything(0)
    spy = Spy(data.input_shape, 10, hidden=[16], affine=False, output_norm=False, lr_decay=1.0, epochs=2, batch_size=8, lr=1e-3)
    model = defense.prepare(spy)
    defense.train(model, data, make_context(5))
    kept = set(balanced_labels(data.y_train, 20, 10, seed=5).tolist())
    assert set(torch.cat(Spy.seen).tolist()) == kept
    assert all(len(index) == 16 for index in Spy.seen)
    # two passes over the 200-image pool in batches of 32 (the defense's, not the model's 8)
    assert len(pool_batches) == 2 * 7 and sorted(torch.cat(pool_batches[:7]).tolist()) == list(range(200))


# --- the defenses, end to end ------------------------------------------------------------------

DEFENSES = {
    "mle": lambda: PlainTraining(**BUDGET),
    "at": lambda: AdversarialTraining(attack={"name": "fgsm", "norm": "linf", "eps": 0.1}, weight=0.5, **BUDGET),
    "vat": lambda: VirtualAdversarialTraining(eps=1.0, xi=0.0, iterations=1, weight=1.0, **BUDGET),
    "xat": lambda: MultiplicativeAdversarialTraining(distance="ce", eps=1.0, weight=0.5, **MASK, **BUDGET),
    "xvat": lambda: MultiplicativeVirtualAdversarialTraining(eps=2.0, weight=1.0, **MASK, **BUDGET),
    "xvat-transductive": lambda: MultiplicativeVirtualAdversarialTraining(
        eps=2.0, weight=1.0, **{**MASK, "mode": "transductive"}, **BUDGET
    ),
    "vat-semi": lambda: VirtualAdversarialTraining(
        eps=1.0, xi=0.0, iterations=1, weight=1.0, **{**BUDGET, "labels": 30}
    ),
}


@pytest.mark.parametrize("name", DEFENSES)
def test_each_defense_passes_the_contract_kit_and_records_its_epoch_time(data, name):
    trained = check_defense(DEFENSES[name](), reference_builder(data), data)
    assert float(getattr(trained, CLOCK)()) > 0
    assert CLOCK in trained.capabilities


def test_the_regulariser_changes_what_the_model_learns(data):
    """Same seed, same batches: VAT and xVAT train other weights than plain training."""
    weights = {}
    for name in ("mle", "vat", "xvat"):
        seed_everything(0)
        defense = DEFENSES[name]()
        model = defense.prepare(tiny_mlp(data))
        defense.train(model, data, make_context(0))
        weights[name] = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert not torch.allclose(weights["mle"], weights["vat"])
    assert not torch.allclose(weights["mle"], weights["xvat"])


def test_mlp_bn_is_the_papers_network_and_passes_the_contract_kit(data):
    paper = BatchNormMLP((1, 28, 28), 10, hidden=[1200, 600, 300, 150], affine=False, output_norm=False,
                         lr_decay=0.95, epochs=1, batch_size=100, lr=1e-3)
    linear = [m for m in paper.modules() if isinstance(m, nn.Linear)]
    widths = [(784, 1200), (1200, 600), (600, 300), (300, 150), (150, 10)]
    assert [(m.in_features, m.out_features) for m in linear] == widths
    assert [m.bias is None for m in linear] == [True] * 4 + [False]
    norms = [m for m in paper.modules() if isinstance(m, nn.BatchNorm1d)]
    assert [m.num_features for m in norms] == [1200, 600, 300, 150] and not any(m.affine for m in norms)
    assert paper.training_settings().lr_decay_epochs == 1
    check_model(lambda: tiny_mlp(data), data)


def test_mlp_bn_with_the_official_vat_network_normalises_the_logits_with_a_learned_scale(data):
    """takerum/vat's FNN_MNIST: batch norm with scale and shift after every layer, the output's too."""
    official = BatchNormMLP((1, 28, 28), 10, hidden=[1200, 1200], affine=True, output_norm=True, lr_decay=0.9,
                            epochs=1, batch_size=100, lr=2e-3)
    layers = list(official.net)
    assert isinstance(layers[-1], nn.BatchNorm1d) and layers[-1].num_features == 10 and layers[-1].affine
    assert isinstance(layers[-2], nn.Linear) and layers[-2].bias is None
    assert sum(m.affine for m in official.modules() if isinstance(m, nn.BatchNorm1d)) == 3
    x = torch.rand(50, 1, 28, 28)
    logits = official.train()(x)
    assert torch.allclose(logits.mean(0), torch.zeros(10), atol=1e-5)  # normalised over the batch
    assert torch.allclose(logits.var(0, unbiased=False), torch.ones(10), atol=1e-3)


def test_epoch_learning_rate_decay_and_its_conflict_with_step_decay(data):
    seed_everything(0)
    model = tiny_mlp(data, epochs=3)
    rates = []

    class Watch(PlainTraining):
        def epoch_finished(self, state):
            rates.append(state.optimizer.param_groups[0]["lr"])

    watch = Watch(**BUDGET)
    watch.train(watch.prepare(model), data, make_context(0))
    assert rates == pytest.approx([1e-3 * 0.9, 1e-3 * 0.81, 1e-3 * 0.729])
    from dataclasses import replace

    from harness.training import fit

    both = replace(model.training_settings(), lr_decay_steps=2)
    with pytest.raises(ValueError, match="not both"):
        fit(model, data, make_context(0), settings=both)
    assert isinstance(both, TrainingSettings)


# --- the mask-erasure attack and the clock metric ------------------------------------------------


def test_mask_erasure_passes_the_contract_kit(data):
    model = reference_classifier(data)
    attack = MaskErasure(norm="l0", center=0.0, max_pixels=6, per_step=2)
    check_attack(attack, model, data.x_test[:10], data.y_test[:10])


def test_mask_erasure_finds_minimal_greedy_masks(data):
    model = reference_classifier(data)
    attack = MaskErasure(norm="l0", center=0.0, max_pixels=64, per_step=1)
    x, y = data.x_test, data.y_test
    outcome = attack.run(model, x, y, None, torch.Generator().manual_seed(0))
    changed = (outcome.x_adv != x).flatten(1)
    # only erasures: a changed pixel is black, and its count is the norm
    assert (outcome.x_adv.flatten(1)[changed] == 0).all()
    assert torch.equal(changed.sum(dim=1).double(), outcome.norms)
    predictions = model.predict(outcome.x_adv)
    clean = model.predict(x)
    broken = predictions != y
    assert (outcome.norms[clean != y] == 0).all()
    assert broken.float().mean() > 0.9
    # minimal along its greedy path: the budget one pixel smaller still classifies correctly
    at_budget = outcome_of(attack, model, x, y, eps=float(outcome.norms[broken & (clean == y)].min()))
    assert at_budget.robust.sum() < (clean == y).sum()


def test_seconds_per_epoch_metric_reads_the_clock(data):
    defense = DEFENSES["mle"]()
    seed_everything(0)
    model = defense.prepare(tiny_mlp(data))
    defense.train(model, data, make_context(0))
    attack = MaskErasure(norm="l0", center=0.0, max_pixels=4, per_step=1)
    outcome = outcome_of(attack, model, data.x_test[:8], data.y_test[:8], eps=4)
    value = check_metric(SecondsPerEpoch(), model, [outcome])
    assert value == pytest.approx(float(model.epoch_clock())) and value > 0


@pytest.mark.slow
def test_small_xvat_suite_runs_and_reuses_its_models(cli, tmp_path):
    """The CI suite: every defense trains once, supervised and with a label budget; a second run
    loads every model from the cache."""
    suite = LEADERBOARDS / "xvat-small.toml"
    output = tmp_path / "xvat-small.csv"
    code, _, err = cli("run", suite, "--output", output)
    assert code == 0, err
    rows = read_leaderboard(output)
    assert set(rows["status"]) == {"ok"}, rows[rows["status"] != "ok"]["message"].tolist()
    assert (rows["metric_seconds-per-epoch"] > 0).all()
    code, _, err = cli("run", suite, "--output", tmp_path / "again.csv", "--force")
    assert code == 0, err
    again = read_leaderboard(tmp_path / "again.csv")
    assert again["train_seconds"].equals(rows["train_seconds"])
    assert again["metric_seconds-per-epoch"].equals(rows["metric_seconds-per-epoch"])


# --- VAT's learning curve -------------------------------------------------------------------------


@pytest.fixture
def idx_folder(tmp_path):
    """1,200 random 28x28 digits, 120 per class, as IDX files: the curve's dataset leaves 200 to train."""
    from conftest import write_idx

    rng = np.random.default_rng(0)
    write_idx(tmp_path / "images-idx3-ubyte.gz", rng.integers(0, 256, (1200, 28, 28), dtype=np.uint8), True)
    write_idx(tmp_path / "labels-idx1-ubyte.gz", np.repeat(np.arange(10, dtype=np.uint8), 120), True)
    return tmp_path


def test_the_learning_curve_records_each_checkpoint_and_resumes_unfinished_seeds(idx_folder, tmp_path, capsys):
    import pandas as pd

    from harness_xvat.curve import main

    output = tmp_path / "curve.csv"
    files = ["--data-dir", str(idx_folder), "--output", str(output), "--threads", "1"]
    arguments = [*files, "--steps", "4", "--every", "2"]
    assert main([*arguments, "--seeds", "0", "1"]) == 0
    curve = pd.read_csv(output)
    assert curve[["seed", "step"]].values.tolist() == [[0, 2], [0, 4], [1, 2], [1, 4]]
    assert (curve["lr"] == 1e-3).all()  # no decay before the 500th step
    accuracies = curve[["test_accuracy", "test_accuracy_running_stats", "labeled_accuracy"]]
    assert ((accuracies >= 0) & (accuracies <= 1)).all().all()
    # a run killed during seed 1: seed 0 is kept, seed 1 is trained again to the same numbers
    curve.iloc[:3].to_csv(output, index=False)
    capsys.readouterr()
    assert main([*arguments, "--seeds", "0", "1"]) == 0
    assert "seed 0: finished before" in capsys.readouterr().err
    again = pd.read_csv(output)
    pd.testing.assert_frame_equal(again.drop(columns="seconds"), curve.drop(columns="seconds"))
    # another configuration in the same file is refused in one line
    assert main([*files, "--steps", "6", "--every", "2", "--seeds", "0"]) == 2
    assert "made with another configuration" in capsys.readouterr().err
    assert main([*files, "--steps", "5", "--every", "2"]) == 2
    assert "must be a multiple of --every" in capsys.readouterr().err


def test_a_learning_curve_variant_changes_the_components_and_says_so_in_its_rows(idx_folder, tmp_path, capsys):
    import json

    import pandas as pd

    from harness_xvat.curve import main

    output = tmp_path / "variant.csv"
    files = ["--data-dir", str(idx_folder), "--output", str(output), "--threads", "1", "--steps", "2", "--every", "2"]
    official = ["--model", "affine=true", "output_norm=true", "lr=2e-3", "--defense", "xi=0",
                "--dataset", "test_size=1100"]
    assert main([*files, "--seeds", "0", *official]) == 0
    config = json.loads(pd.read_csv(output)["config"].iloc[0])
    assert config["dataset"]["test_size"] == 1100
    assert config["model"] == {"name": "mlp-bn", "hidden": [1200, 1200], "lr": 2e-3, "lr_decay": 0.95, "affine": True,
                               "output_norm": True}
    assert config["defense"]["xi"] == 0 and config["defense"]["eps"] == 0.3
    capsys.readouterr()
    assert main([*files, "--seeds", "0"]) == 2  # the plain configuration is another file's
    assert "made with another configuration" in capsys.readouterr().err
    for bad, message in ((["--model", "lr"], "expected KEY=VALUE"), (["--model", "lr=fast"], "expected KEY=VALUE"),
                         (["--defense", 'name="xvat"'], "cannot change 'name'")):
        assert main([*files, "--output", str(tmp_path / "other.csv"), *bad]) == 2
        assert message in capsys.readouterr().err
    assert main([*files, "--output", str(tmp_path / "other.csv"), "--model", "output_nrom=true"]) == 2
    assert "output_norm" in capsys.readouterr().err  # did you mean
