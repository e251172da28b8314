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
