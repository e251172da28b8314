"""The SCAE evasion attack on a toy capsule model: target selection, binary search, batch independence,
minimality of what it returns, and the attack contract."""

from __future__ import annotations

import pytest
import torch
from harness_scae.evasion import SCAEEvasion, active_capsules, scae_evasion, update_const
from scae_toys import ToyCapsuleModel, toy_batch

from harness.testing import check_attack

SETTINGS = {"head": "posterior-linear", "const": 100.0, "optimizer": "adam", "lr": 1.0, "mask": True}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The toy's tensors are tiny: threads only add OpenMP waits, which are slow when the cores are busy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model() -> ToyCapsuleModel:
    return ToyCapsuleModel().eval()


def noise(outer: int, x: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """The initial w of every outer iteration, for every image: (outer, *x.shape)."""
    return torch.rand(outer, *x.shape, generator=torch.Generator().manual_seed(seed))


def attack(model, x, y, initial, *, outer, inner, **settings):
    """The core attack with precomputed initial noise (``initial[k]`` for outer iteration k)."""
    return scae_evasion(
        model, x, y, initial_w=lambda k: initial[k], outer=outer, inner=inner, **{**SETTINGS, **settings}
    )


def test_active_capsules_are_chosen_per_image():
    presences = torch.tensor([[0.9, 0.8, 0.1, 0.1], [0.05, 0.02, 0.04, 0.01]])
    # The global mean (0.2525) would select nothing in the second image and the same two in the first.
    expected = torch.tensor([[True, True, False, False], [True, False, True, False]])
    assert torch.equal(active_capsules(presences), expected)


def test_binary_search_grows_tenfold_until_a_success_then_bisects():
    const, lower, upper = torch.tensor([100.0, 100.0]), torch.zeros(2), torch.full((2,), float("inf"))
    outcomes = [(False, True), (False, True), (True, False), (False, True), (True, False)]
    history = []
    for succeeded in outcomes:
        const, lower, upper = update_const(const, lower, upper, torch.tensor(succeeded))
        history.append(const.tolist())
    assert history == [
        [1000.0, 50.0],  # no upper bound yet: x10 / a success: midpoint of [0, 100]
        [10000.0, 25.0],
        [5500.0, 37.5],  # first success: midpoint of [1000, 10000] / a failure: midpoint of [25, 50]
        [7750.0, 31.25],
        [6625.0, 34.375],
    ]


def test_images_never_broken_end_with_the_constant_grown_every_outer_iteration(model):
    x, y = toy_batch(20, model)
    outcome = SCAEEvasion(outer=3, inner=2, lr=0.01).run(model, x, y, None, torch.Generator().manual_seed(0))
    failed = (outcome.extras["success"] == 0) & (model.predict(x) == y)
    assert failed.any()
    assert torch.equal(outcome.extras["const"][failed], torch.full((int(failed.sum()),), 100.0 * 10**3))


def test_a_batch_is_attacked_as_each_image_alone(model):
    x, y = toy_batch(6, model, seed=1)
    initial = noise(2, x)
    batched = attack(model, x, y, initial, outer=2, inner=15)
    assert batched.success.any() and not batched.success.all()
    for i in range(len(x)):
        alone = attack(model, x[i : i + 1], y[i : i + 1], initial[:, i : i + 1], outer=2, inner=15)
        assert torch.allclose(batched.x_adv[i : i + 1], alone.x_adv, atol=1e-5), f"image {i}"
        assert torch.equal(batched.success[i : i + 1], alone.success), f"image {i}"
        assert torch.allclose(batched.const[i : i + 1], alone.const), f"image {i}"


def test_breaks_most_images_and_returns_misclassified_or_clean_inputs(model):
    x, y = toy_batch(40, model, wrong=3)
    outcome = SCAEEvasion(outer=3, inner=20).run(model, x, y, None, torch.Generator().manual_seed(0))
    success = outcome.extras["success"] > 0
    correct = model.predict(x) == y
    assert outcome.scalars["success_rate"] == pytest.approx(success[correct].double().mean().item())
    assert outcome.scalars["success_rate"] >= 0.7
    assert not success[~correct].any()
    assert (model.predict(outcome.x_adv[success]) != y[success]).all()
    assert (outcome.norms[success] > 0).all()
    assert torch.equal(outcome.x_adv[~success], x[~success])


@pytest.mark.parametrize("shorter, longer", [({"outer": 1, "inner": 20}, {"outer": 3, "inner": 20}),
                                             ({"outer": 1, "inner": 8}, {"outer": 1, "inner": 20})])
def test_more_iterations_from_the_same_start_never_return_a_larger_perturbation(model, shorter, longer):
    """The longer run repeats the shorter one and goes on, so keeping the smallest success can only improve."""
    x, y = toy_batch(30, model, seed=2)
    initial = noise(3, x)
    first, second = attack(model, x, y, initial, **shorter), attack(model, x, y, initial, **longer)
    assert first.success.any() and (second.success >= first.success).all()
    norms = [(r.x_adv - x).flatten(1).norm(dim=1) for r in (first, second)]
    assert (norms[1][first.success] <= norms[0][first.success]).all()


def test_contract(model):
    x, y = toy_batch(5, model)
    check_attack(SCAEEvasion(outer=2, inner=5), model, x, y)


def test_other_heads_and_no_mask_run(model):
    x, y = toy_batch(10, model, wrong=0)
    for head in ("prior-kmeans", "prior-linear"):
        labels = model.classify_presences(model.capsule_presences(x, "prior"), head)
        outcome = SCAEEvasion(head=head, outer=2, inner=10, mask=False).run(
            model, x, labels, None, torch.Generator().manual_seed(0)
        )
        broken = outcome.extras["success"] > 0
        assert broken.any()
        adv = model.classify_presences(model.capsule_presences(outcome.x_adv, "prior"), head)
        assert (adv[broken] != labels[broken]).all()


def test_sign_steps_break_images(model):
    x, y = toy_batch(20, model)
    outcome = SCAEEvasion(optimizer="sign", lr=1.0, outer=2, inner=20).run(
        model, x, y, None, torch.Generator().manual_seed(0)
    )
    success = outcome.extras["success"] > 0
    assert outcome.scalars["success_rate"] >= 0.5
    assert (model.predict(outcome.x_adv[success]) != y[success]).all()


@pytest.mark.parametrize("settings", [{"norm": "linf"}, {"head": "posterior"}, {"optimizer": "sgd"}, {"inner": 0}])
def test_rejects_bad_settings(settings):
    with pytest.raises(ValueError):
        SCAEEvasion(**settings)


def test_steps_follow_the_gradient_of_the_papers_loss_and_descend(model, monkeypatch):
    """The gradient handed to the step rule is that of ½‖x′ − x‖² + const · ½ Σ_active a² with
    x′ = (tanh(w · ink + atanh(2x − 1)) + 1) / 2 (Formula 4 and Appendix A), written out here; and
    w moves against it."""
    from harness_scae import evasion
    from harness_scae.evasion import ATANH_SHRINK, ink_mask

    x, y = toy_batch(4, model, seed=2, wrong=0)
    start = torch.rand(x.shape, generator=torch.Generator().manual_seed(7)) - 0.5
    seen = []

    def recording_rule(optimizer, lr, like):
        def step(grad):
            seen.append(grad.clone())
            return 0.05 * grad
        return step

    monkeypatch.setattr(evasion, "_step_rule", recording_rule)
    const = 30.0
    scae_evasion(model, x, y, head="posterior-linear", initial_w=lambda k: start, outer=1, inner=2, const=const,
                 optimizer="sign", lr=0.1, mask=True)

    targets = active_capsules(model.capsule_presences(x, "posterior")).to(x.dtype)

    def loss_gradient(w, scale=ink_mask(x)):
        w = w.clone().requires_grad_(True)
        candidate = 0.5 * (torch.tanh(w * scale + torch.atanh((2 * x - 1) * ATANH_SHRINK)) + 1)
        presences = model.capsule_presences(candidate, "posterior")
        loss = 0.5 * (candidate - x).flatten(1).square().sum(1) + const * 0.5 * (presences * targets).square().sum(1)
        return torch.autograd.grad(loss.sum(), w)[0]

    first = loss_gradient(start)
    assert torch.allclose(seen[0], first, rtol=1e-4, atol=1e-7)
    assert torch.allclose(seen[1], loss_gradient(start - 0.05 * first), rtol=1e-4, atol=1e-7)  # descent
    # the attack object passes its own settings on: no ink mask, its constant, its generator's start
    seen.clear()
    SCAEEvasion(outer=1, inner=1, const=const, mask=False, head="posterior-linear").generate(
        model, x, y, None, generator=torch.Generator().manual_seed(0))
    uniform = torch.rand(x.shape, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(seen[0], loss_gradient(uniform, torch.ones_like(x)), rtol=1e-4, atol=1e-7)


def test_the_batched_adam_is_torchs_adam():
    from harness_scae.evasion import _Adam

    grads = [torch.tensor([[0.5, -2.0]]), torch.tensor([[0.1, 3.0]]), torch.tensor([[-1.0, 0.0]])]
    ours = _Adam(grads[0], lr=0.3)
    parameter = torch.nn.Parameter(torch.zeros(1, 2))
    reference = torch.optim.Adam([parameter], lr=0.3, betas=(0.9, 0.999), eps=1e-8)
    w = torch.zeros(1, 2)
    for grad in grads:
        w = w - ours(grad)
        parameter.grad = grad.clone()
        reference.step()
        assert torch.allclose(w, parameter.detach(), atol=1e-6)


def test_defaults_are_the_reference_codes_and_the_smallest_settings_are_accepted():
    attack = SCAEEvasion()
    assert (attack.outer, attack.inner, attack.const, attack.optimizer, attack.lr, attack.mask, attack.batch_size) == (
        9, 300, 100.0, "adam", 1.0, True, 100
    )
    SCAEEvasion(outer=1, inner=1, batch_size=1)
    for settings, message in (({"batch_size": 0}, "at least 1"), ({"outer": 0}, "at least 1"),
                              ({"norm": "linf"}, "minimises the l2 norm, not 'linf'"),
                              ({"optimizer": "sgd"}, "unknown optimizer 'sgd' \\(known: adam, sign\\)")):
        with pytest.raises(ValueError, match=message):
            SCAEEvasion(**settings)


def test_the_outcome_is_fixed_by_the_attacks_generator_alone(model):
    x, y = toy_batch(5, model, seed=3)
    runs = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)
        runs.append(SCAEEvasion(outer=2, inner=3).run(model, x, y, None, torch.Generator().manual_seed(0)).x_adv)
    assert torch.equal(*runs)


def test_a_batch_with_nothing_classified_correctly_has_success_rate_zero(model):
    x, y = toy_batch(3, model, seed=4, wrong=3)
    outcome = SCAEEvasion(outer=1, inner=2).run(model, x, y, None, torch.Generator().manual_seed(0))
    assert outcome.scalars["success_rate"] == 0.0 and torch.equal(outcome.x_adv, x)
    assert outcome.extras["success"].dtype == x.dtype and not outcome.extras["success"].any()


def test_the_ink_mask_is_a_zero_padded_box_average():
    from harness_scae.evasion import ink_mask

    x = torch.zeros(1, 1, 4, 4)
    x[0, 0, 0, 0] = 1.0
    mask = ink_mask(x)[0, 0]
    assert mask[0, 0].item() == pytest.approx(1 / 9) and mask[1, 1].item() == pytest.approx(1 / 9)
    assert mask[2, 2].item() == 0.0


def test_the_attack_object_applies_the_ink_mask_by_default(model):
    """Blank pixels far from ink have a mask of zero, so w cannot move them: they stay at the tanh
    reparametrisation's image of 0 (about 5e-7), or at 0 where nothing was found."""
    from harness_scae.evasion import ATANH_SHRINK, ink_mask

    x, y = toy_batch(6, model, seed=5, wrong=0)
    far = ink_mask(x) == 0
    fixed = {0.0, (0.5 * (torch.tanh(torch.atanh(torch.tensor(-ATANH_SHRINK))) + 1)).item()}
    masked = SCAEEvasion(outer=1, inner=5).run(model, x, y, None, torch.Generator().manual_seed(0))
    unmasked = SCAEEvasion(outer=1, inner=5, mask=False).run(model, x, y, None, torch.Generator().manual_seed(0))
    assert far.any() and set(masked.x_adv[far].tolist()) <= fixed
    assert not set(unmasked.x_adv[far].tolist()) <= fixed
