"""The paper plugins' formulas against values computed by hand on tiny stub models: each test fails
when its formula is broken (a KL's arguments swapped, a budget dropped, a weight left out), which a
test that only asks "did training change the weights?" never notices."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from harness.contracts import Batch
from harness_dbp.attacks import LatentAttack, OutputAttack, gaussian_kl
from harness_dbp.models import kl_to_standard_normal
from harness_xvat import defenses
from harness_xvat.divergence import kl_divergence

BUDGET = {"labels": 0, "labeled_batch_size": 2, "unlabeled_batch_size": 2, "epochs": None, "batch_stats": "running"}
MASK = {"mode": "inductive", "l0_weight": 0.25, "lr_a": 0.0, "gamma": -0.1, "zeta": 1.1, "beta": 0.66, "center": 0.5}


class LinearScores(torch.nn.Module):
    """logits = x W for two pixels and two classes, in double precision; no batch norm."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.tensor([[2.0, -1.0], [0.5, 1.5]], dtype=torch.float64))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.weight


def probabilities(model: LinearScores, x: torch.Tensor) -> torch.Tensor:
    return torch.softmax(model.logits(x), dim=1)


def kl_by_hand(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per row, written out."""
    return sum(p[:, k] * torch.log(p[:, k] / q[:, k]) for k in range(p.shape[1]))


def test_kl_divergence_is_kl_of_p_from_q_not_the_reverse():
    p, q = torch.tensor([[0.9, 0.1]]), torch.tensor([[0.5, 0.5]])
    value = kl_divergence(p.log(), q.log()).item()
    assert value == pytest.approx(0.9 * math.log(1.8) + 0.1 * math.log(0.2))  # 0.368
    assert value != pytest.approx(kl_divergence(q.log(), p.log()).item(), abs=0.1)  # 0.511 the other way


def test_vat_adds_weight_times_kl_of_the_clean_from_the_eps_step(monkeypatch):
    """VAT: loss + weight * KL(p(x) || p(x + eps d)); d is pinned, so eps and the order show."""
    model = LinearScores()
    direction = torch.tensor([[0.6, 0.8], [1.0, 0.0]], dtype=torch.float64)
    monkeypatch.setattr(defenses, "virtual_adversarial_direction", lambda *args: direction)
    vat = defenses.VirtualAdversarialTraining(eps=0.7, xi=1e-6, iterations=1, weight=3.0, **BUDGET)
    vat.random = torch.Generator()
    x = torch.tensor([[0.2, 0.9], [0.5, 0.1]], dtype=torch.float64)
    state = SimpleNamespace(model=model)
    loss = torch.tensor(1.25, dtype=torch.float64)
    value = vat.regularise(state, None, Batch(x, torch.zeros(2, dtype=torch.long), torch.arange(2)), loss)
    expected = kl_by_hand(probabilities(model, x), probabilities(model, x + 0.7 * direction)).mean()
    assert value.item() == pytest.approx(1.25 + 3.0 * expected.item(), rel=1e-12)


def test_xvat_adds_weight_times_kl_of_the_masked_from_the_clean_and_the_l0_term(monkeypatch):
    """xVAT (the reference's order): loss + l0_weight * L0 + weight * KL(p(x_hat) || p(x))."""
    model = LinearScores()
    xvat = defenses.MultiplicativeVirtualAdversarialTraining(eps=2.0, weight=3.0, **MASK, **BUDGET)
    x = torch.tensor([[0.2, 0.9], [0.5, 0.1]], dtype=torch.float64)
    x_hat = torch.tensor([[0.9, 0.1], [0.0, 0.7]], dtype=torch.float64)
    monkeypatch.setattr(xvat, "masked", lambda batch: (x_hat, torch.tensor(0.4, dtype=torch.float64)))
    state = SimpleNamespace(model=model)
    loss = torch.tensor(1.25, dtype=torch.float64)
    value = xvat.regularise(state, None, Batch(x, torch.zeros(2, dtype=torch.long), torch.arange(2)), loss)
    expected = kl_by_hand(probabilities(model, x_hat), probabilities(model, x)).mean()
    assert value.item() == pytest.approx(1.25 + 0.25 * 0.4 + 3.0 * expected.item(), rel=1e-12)
    reversed_order = kl_by_hand(probabilities(model, x), probabilities(model, x_hat)).mean()
    assert abs(expected - reversed_order) > 0.05  # the test can tell the two orders apart


def test_xat_mixes_the_loss_and_the_kl_distance_by_weight(monkeypatch):
    model = LinearScores()
    xat = defenses.MultiplicativeAdversarialTraining(distance="kl", eps=1.0, weight=0.3, **MASK, **BUDGET)
    x = torch.tensor([[0.2, 0.9], [0.5, 0.1]], dtype=torch.float64)
    x_hat = torch.tensor([[0.9, 0.1], [0.0, 0.7]], dtype=torch.float64)
    monkeypatch.setattr(xat, "masked", lambda batch: (x_hat, torch.tensor(0.4, dtype=torch.float64)))
    loss = torch.tensor(1.25, dtype=torch.float64)
    value = xat.regularise(SimpleNamespace(model=model), Batch(x, torch.zeros(2, dtype=torch.long), torch.arange(2)), None, loss)
    expected = kl_by_hand(probabilities(model, x_hat), probabilities(model, x)).mean()
    assert value.item() == pytest.approx(0.7 * 1.25 + 0.25 * 0.4 + 0.3 * expected.item(), rel=1e-12)


def test_gaussian_kl_matches_the_closed_form_in_its_order():
    """KL(N(0, 1) || N(1, 4)) = ln 2 + (1 + 1) / 8 - 1/2; the other order is 1.307."""
    zero, one = torch.zeros(1, 1), torch.ones(1, 1)
    value = gaussian_kl(zero, zero, one, torch.full((1, 1), math.log(4.0))).item()
    assert value == pytest.approx(math.log(2.0) + 0.25 - 0.5)
    assert kl_to_standard_normal(torch.tensor([[1.0]]), torch.tensor([[math.log(4.0)]])).item() == pytest.approx(
        0.5 * (1.0 + 4.0 - math.log(4.0) - 1.0)
    )


def test_the_latent_attack_brings_the_perturbed_code_close_in_kl_from_it_to_the_target():
    """distance = KL(q(z | x_in) || q(z | x_target)) with a stub encoder (mean: pixel 0, log-variance:
    pixel 1), so swapping the KL's arguments changes the value."""
    encoder = SimpleNamespace(encode=lambda x: (x.flatten(1)[:, :1], x.flatten(1)[:, 1:2]))
    x_in = torch.tensor([[0.0, 0.0]])
    x_target = torch.tensor([[1.0, math.log(4.0)]])
    attack = LatentAttack(norm="l2", pairs=1, iterations=1, lr=0.1, c_grid=[1.0], reconstructions=1)
    assert attack.distance(encoder, x_in, x_target).item() == pytest.approx(math.log(2.0) - 0.25)


def test_gaussian_kl_with_both_variances_free():
    """KL(N(0.5, e^0.7) || N(-1, e^-0.4)) per dimension, written out: both log-variances enter."""
    mean_1, log_var_1 = torch.tensor([[0.5, 0.0]]), torch.tensor([[0.7, -0.3]])
    mean_2, log_var_2 = torch.tensor([[-1.0, 0.2]]), torch.tensor([[-0.4, 0.3]])

    def by_hand(m1, v1, m2, v2):
        return 0.5 * (v2 - v1 + (math.exp(v1) + (m1 - m2) ** 2) / math.exp(v2) - 1.0)

    expected = by_hand(0.5, 0.7, -1.0, -0.4) + by_hand(0.0, -0.3, 0.2, 0.3)
    assert gaussian_kl(mean_1, log_var_1, mean_2, log_var_2).item() == pytest.approx(expected, rel=1e-6)


class HalfScale(torch.nn.Module):
    """A deterministic 'autoencoder' whose reconstruction is the input halved, plus 0.25 when
    sampled: the output attack must use the sampled reconstruction (Formula 8, one latent draw)."""

    def reconstruct(self, x: torch.Tensor, sample: bool = True) -> torch.Tensor:
        return x / 2 + (0.25 if sample else 0.0)

    def encode(self, x):
        return x.flatten(1), torch.zeros_like(x.flatten(1))


def test_the_output_attack_measures_the_sampled_reconstruction_in_squared_l2():
    attack = OutputAttack(norm="l2", pairs=1, iterations=1, lr=0.1, c_grid=[1.0], reconstructions=1)
    x_in, target = torch.tensor([[[[0.5, 1.0]]]]), torch.tensor([[[[1.0, 0.0]]]])
    # reconstruction (0.5, 0.75): squared distance 0.25 + 0.5625
    assert attack.distance(HalfScale(), x_in, target).item() == pytest.approx(0.8125)


def test_the_attacks_minimise_c_times_the_squared_perturbation_plus_the_distance():
    """With reconstruction x / 2 + 1/4 and a target inside reach, C ||delta||^2 + ||x_in / 2 + 1/4 - t||^2
    has its minimum at delta = (t - 1/4 - x_s / 2) / (2 C + 1/2): Adam gets there for two C."""
    attack = OutputAttack(norm="l2", pairs=1, iterations=600, lr=0.01, c_grid=[0.5, 2.0], reconstructions=1)
    x_source = torch.full((2, 1, 1, 2), 0.2, dtype=torch.float64)
    x_target = torch.full((2, 1, 1, 2), 0.6, dtype=torch.float64)
    constants = torch.tensor([0.5, 2.0], dtype=torch.float64)
    delta = attack.optimise(HalfScale(), x_source, x_target, constants, torch.Generator().manual_seed(0))
    expected = (0.6 - 0.25 - 0.1) / (2 * constants + 0.5)  # 0.1667 and 0.0556
    assert torch.allclose(delta.flatten(1), expected[:, None].expand(2, 2), atol=2e-3)


def test_the_attack_keeps_the_closest_perturbation_within_the_source_target_distance(monkeypatch):
    """Per source, among the C whose input distortion is at most 1 (inclusive), the one with the
    lowest output distortion; a source with none keeps its clean image. Targets recorded, -1 elsewhere."""
    from harness_dbp import attacks

    attack = OutputAttack(norm="l2", pairs=2, iterations=1, lr=0.1, c_grid=[1.0, 2.0, 3.0], reconstructions=1)
    x = torch.tensor([0.1, 0.2, 0.3, 0.4]).view(4, 1, 1, 1)
    y = torch.tensor([0, 1, 2, 3])
    pairs = (torch.tensor([1, 3]), torch.tensor([0, 2]))
    monkeypatch.setattr(attacks, "choose_pairs", lambda y, count, generator: pairs)
    # each (source, C) row's perturbation is 0.01 * (its row number + 1): it shows which C was kept
    monkeypatch.setattr(attack, "optimise", lambda model, xs, xt, c, g: 0.01 * torch.arange(1.0, 7.0).view(6, 1, 1, 1))
    inputs = torch.tensor([0.5, 1.0, 1.5, 1.2, 2.0, 3.0])  # source 1: C = 2 is at the bound; source 3: none within
    outputs = torch.tensor([0.6, 0.2, 0.0, 0.0, 0.0, 0.0])
    monkeypatch.setattr(attack, "distortions", lambda *args: (inputs, outputs))
    outcome = attack.generate(HalfScale(), x, y, None, generator=torch.Generator())
    assert outcome.x_adv[1].item() == pytest.approx(0.2 + 0.02)  # C = 2 (input distortion exactly 1)
    assert outcome.x_adv[3].item() == pytest.approx(0.4)  # nothing within: unchanged
    assert torch.equal(outcome.x_adv[[0, 2]], x[[0, 2]])
    assert outcome.extras["target"].tolist() == [-1, 0, -1, 2]
    assert torch.isnan(outcome.extras["input_distortion"][[0, 2]]).all()
    assert outcome.extras["input_distortion"][3].tolist() == pytest.approx([1.2, 2.0, 3.0])


def test_the_adversarial_inputs_stay_images():
    """A reconstruction x / 2 + 1/4 can only reach a target of 0.75 from inputs beyond 1: the
    attack's inputs are clipped to [0, 1] all the same."""
    attack = OutputAttack(norm="l2", pairs=1, iterations=200, lr=0.05, c_grid=[1e-3], reconstructions=1)
    x = torch.tensor([0.9, 0.0]).view(2, 1, 1, 1)
    y = torch.tensor([0, 1])
    outcome = attack.generate(HalfScale(), x, y, None, generator=torch.Generator().manual_seed(0))
    assert (outcome.x_adv >= 0).all() and (outcome.x_adv <= 1).all()
    source = int((outcome.extras["target"] >= 0).nonzero()[0])
    assert not torch.equal(outcome.x_adv[source], x[source])  # it moved, and stopped at the bound


def test_the_autoencoder_attacks_check_their_parameters():
    valid = {"norm": "l2", "pairs": 1, "iterations": 1, "lr": 0.1, "c_grid": [1.0], "reconstructions": 1}
    OutputAttack(**valid)
    for change in ({"pairs": 0}, {"iterations": 0}, {"reconstructions": 0}, {"c_grid": []}):
        with pytest.raises(ValueError, match="at least 1"):
            OutputAttack(**{**valid, **change})
    with pytest.raises(ValueError, match="l2 norm, not 'linf'"):
        OutputAttack(**{**valid, "norm": "linf"})


def test_the_optimisation_judges_clipped_inputs_so_it_stops_at_the_bound():
    """A target that only inputs beyond [0, 1] would reach: with the input clipped inside the loss,
    going past the bound buys nothing and the C term pulls delta back to it (0.1 above 0.9, 0.1
    below 0.1); unclipped, delta would run on to about 0.6."""
    attack = OutputAttack(norm="l2", pairs=1, iterations=800, lr=0.01, c_grid=[0.01], reconstructions=1)
    x_source = torch.tensor([0.9, 0.1], dtype=torch.float64).view(2, 1, 1, 1)
    x_target = torch.tensor([1.0, 0.0], dtype=torch.float64).view(2, 1, 1, 1)  # reachable from 1.5 and -0.5
    delta = attack.optimise(HalfScale(), x_source, x_target, torch.full((2,), 0.01, dtype=torch.float64),
                            torch.Generator().manual_seed(0))
    assert delta.flatten().tolist() == pytest.approx([0.1, -0.1], abs=0.02)


def test_the_attack_is_fixed_by_its_generator_alone():
    attack = OutputAttack(norm="l2", pairs=2, iterations=5, lr=0.05, c_grid=[0.5, 1.0], reconstructions=1)
    x = torch.rand(6, 1, 2, 2, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    runs = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)
        runs.append(attack.generate(HalfScale(), x, y, None, generator=torch.Generator().manual_seed(0)).x_adv)
    assert torch.equal(*runs)
