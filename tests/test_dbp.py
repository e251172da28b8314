"""The DBP plugin: autoencoders with double backpropagation, the GMM head, the latent and output
attacks and the AUDDC, on tiny configurations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from harness.testing import (
    check_attack,
    check_metric,
    check_model,
    make_context,
    outcome_of,
    tiny_digits,
    training_state,
)
from harness.training import seed_everything
from harness_dbp.attacks import LatentAttack, OutputAttack, choose_pairs
from harness_dbp.gmm import ClassGMM
from harness_dbp.metrics import AUDDC, EncoderGradient, ReconstructionGradient, ReconstructionLoss, auddc
from harness_dbp.models import DRAW, VAE

TRAINING = {
    "dbp_schedule": "constant",
    "kl_weight": 1.0,
    "gmm_components": 1,
    "gmm_covariance": "diag",
    "epochs": 2,
    "batch_size": 32,
    "lr": 3e-3,
}
ATTACK = {
    "norm": "l2",
    "pairs": 2,
    "iterations": 30,
    "lr": 0.05,
    "c_grid": [0.0, 2.0**-4, 1.0, 2.0**4],
    "reconstructions": 4,
}


@pytest.fixture(scope="module")
def data():
    return tiny_digits(n_train=150, n_test=30)


def vae(data, dbp=0.0, **overrides):
    return VAE(data.input_shape, data.num_classes, hidden=[16], latent=4, **{**TRAINING, "dbp": dbp, **overrides})


def draw(data, attention, **overrides):
    return DRAW(
        data.input_shape,
        data.num_classes,
        preset="small",
        steps=2,
        hidden=8,
        latent=2,
        attention="on" if attention else "off",
        window=3,
        **{**TRAINING, "dbp": 0.0, **overrides},
    )


def loss_with_seed(model, x, y, state, seed=0):
    torch.manual_seed(seed)  # the same latent samples in every call
    return model.loss(x, y, state)


def reconstruction_with_target(model, images, target):
    """The per-image reconstruction loss of ``images`` against a separate ``target``, with the same
    latent noise in every call."""
    torch.manual_seed(0)
    _, _, logits = model.run(images, sample=True)
    return model.reconstruction_loss(logits, target)


def test_dbp_penalty_is_the_network_path_gradient_with_the_target_fixed(data):
    """The penalty is ||d L_rec(d(e(x)), x_bar) / dx||^2 with x_bar held fixed: central differences
    move the network's input only. Moving the target with it (the literal reading of Formula 10)
    gives another, much larger gradient, which this test tells apart."""
    seed_everything(0)
    model = vae(data, dbp=1.0).double()
    x, y = data.x_train[:3].double(), data.y_train[:3]
    penalised = loss_with_seed(model, x, y, training_state(model, data))
    model.dbp = 0.0
    plain = loss_with_seed(model, x, y, training_state(model, data))

    step, flat = 1e-5, x.flatten(1)
    numeric, total = torch.zeros_like(flat), torch.zeros_like(flat)
    for pixel in range(flat.shape[1]):
        shift = torch.zeros_like(flat)
        shift[:, pixel] = step
        up, down = (flat + shift).view_as(x), (flat - shift).view_as(x)
        numeric[:, pixel] = (reconstruction_with_target(model, up, x) - reconstruction_with_target(model, down, x)) / (
            2 * step
        )
        total[:, pixel] = (reconstruction_with_target(model, up, up) - reconstruction_with_target(model, down, down)) / (
            2 * step
        )
    torch.manual_seed(0)
    *_, gradient = model.reconstruction_gradient(x, sample=True, create_graph=False)
    assert torch.allclose(gradient, numeric, atol=1e-5, rtol=1e-4)
    assert torch.allclose(penalised - plain, numeric.square().sum(dim=1).mean(), rtol=1e-5)
    assert not torch.allclose(penalised - plain, total.square().sum(dim=1).mean(), rtol=0.1)


def test_the_gradient_metrics_are_the_network_path_gradient_and_the_encoder_jacobian(data):
    seed_everything(0)
    model = draw(data, attention=True).double().eval()
    x = data.x_test[:3].double()
    jacobian = torch.autograd.functional.jacobian(lambda images: model.encode(images)[0], x)  # (B, D, B, C, H, W)
    per_image = torch.stack([jacobian[i, :, i].flatten(1).norm() for i in range(len(x))])
    assert EncoderGradient().evaluate(model, x, None) == pytest.approx(per_image.mean().item(), rel=1e-9)
    assert not torch.allclose(per_image, per_image.mean())  # a mean of different images, not one repeated

    def loss(images):
        _, _, logits = model.run(images, sample=False)
        return model.reconstruction_loss(logits, x).sum()  # the target stays x

    fixed_target = torch.autograd.functional.jacobian(loss, x).flatten(1).norm(dim=1)
    assert ReconstructionGradient().evaluate(model, x, None) == pytest.approx(fixed_target.mean().item(), rel=1e-9)


def test_no_penalty_when_lambda2_is_zero_or_in_the_first_half_of_the_schedule(data):
    seed_everything(0)
    x, y = data.x_train[:4], data.y_train[:4]
    model = vae(data, dbp=0.0)
    mean, log_var, logits = (lambda: (torch.manual_seed(0), model.run(x, sample=True))[1])()
    expected = (
        model.reconstruction_loss(logits, x).mean()
        + 0.5 * (mean.square() + log_var.exp() - log_var - 1).sum(dim=1).mean()
    )
    assert torch.allclose(loss_with_seed(model, x, y, training_state(model, data)), expected)
    scheduled = vae(data, dbp=5.0, dbp_schedule="half", epochs=10)
    assert scheduled.dbp_weight(training_state(scheduled, data, epoch=4)) == 0.0
    assert scheduled.dbp_weight(training_state(scheduled, data, epoch=5)) == 5.0


@pytest.mark.parametrize("attention", [False, True])
def test_draw_shapes(data, attention):
    seed_everything(0)
    model = draw(data, attention)
    assert model.attention is attention
    mean, log_var, logits = model.run(data.x_test[:5], sample=True)
    assert mean.shape == log_var.shape == (5, 2 * 2)
    assert logits.shape == (5, 64)
    assert model.reconstruct(data.x_test[:5]).shape == (5, *data.input_shape)
    assert torch.isfinite(model.loss(data.x_test[:5], data.y_test[:5], training_state(model, data)))


@pytest.mark.parametrize("covariance", ["full", "diag"])
def test_gmm_head_agrees_with_sklearn(covariance):
    from sklearn.mixture import GaussianMixture

    rng = np.random.default_rng(0)
    z = torch.from_numpy(np.concatenate([rng.normal(0, 1, (60, 3)), rng.normal(4, 0.5, (60, 3))])).float()
    labels = torch.tensor([0] * 60 + [1] * 60)
    head = ClassGMM(2, 2, 3, covariance)
    head.fit(z, labels, seed=0)
    for label in (0, 1):
        mixture = GaussianMixture(2, covariance_type=covariance, random_state=0).fit(
            z[labels == label].double().numpy()
        )
        components = head.component_log_densities(z)[:, label]
        expected = mixture.predict_proba(z.double().numpy())
        assert np.allclose(components.softmax(dim=1).numpy(), expected, atol=1e-4)
        assert np.allclose(
            head.log_densities(z)[:, label].numpy(), mixture.score_samples(z.double().numpy()), atol=1e-3
        )
    assert (head.log_densities(z).argmax(dim=1) == labels).float().mean() > 0.95


@pytest.mark.parametrize("build", [vae, lambda data: draw(data, False), lambda data: draw(data, True)])
def test_models_pass_the_contract_kit(data, build):
    model = check_model(lambda: build(data), data)
    assert model.head_modules() == [model.gmm]


def test_pairs_have_distinct_labels_and_are_reproducible():
    y = torch.tensor([0, 0, 1, 1, 2, 2, 3])
    sources, targets = choose_pairs(y, 4, torch.Generator().manual_seed(0))
    assert len(set(sources.tolist())) == 4 and (y[sources] != y[targets]).all()
    again = choose_pairs(y, 4, torch.Generator().manual_seed(0))
    assert torch.equal(sources, again[0]) and torch.equal(targets, again[1])


@pytest.fixture(scope="module")
def trained():
    """A VAE that reconstructs digits well enough for its attacks to mean something (seconds)."""
    data = tiny_digits(n_train=500, n_test=30)
    seed_everything(0)
    model = VAE(data.input_shape, data.num_classes, hidden=[64], latent=8, **{**TRAINING, "dbp": 0.0, "epochs": 40})
    model.fit(data, make_context())
    model.fit_head(data, make_context())
    return model.eval()


def test_the_gmm_heads_input_gradient_under_the_margin_attack_is_non_zero_on_every_test_digit(trained, data):
    """The white-box attacks on the encoder + GMM head ascend the margin of the class
    log-densities (``loss = "margin"``, as the suites set it), whose gradient reaches every input.
    With the head's standard deviations cut tenfold, its margins grow a hundredfold to the
    hundreds of the MNIST models, where the cross-entropy's gradient vanishes on some digits."""
    import copy

    from harness_art.attacks import PGD

    sharp = copy.deepcopy(trained)
    sharp.gmm.precision_cholesky.mul_(10.0)
    one_hot = torch.nn.functional.one_hot(data.y_test, data.num_classes).numpy().astype("float32")
    vanishing = {}
    for loss in ("cross-entropy", "margin"):
        estimator = PGD("linf", None, 40, 0, 256, loss).classifier(sharp, torch.device("cpu"))
        gradient = torch.from_numpy(estimator.loss_gradient(data.x_test.numpy(), one_hot))
        vanishing[loss] = int((gradient.flatten(1).abs().amax(dim=1) == 0).sum())
    assert vanishing["cross-entropy"] > 0
    assert vanishing["margin"] == 0


@pytest.mark.parametrize("attack_class", [LatentAttack, OutputAttack])
def test_attacks_reach_their_target_on_an_undefended_model(trained, data, attack_class):
    attack = attack_class(**{**ATTACK, "iterations": 200, "reconstructions": 32})
    x, y = data.x_test[:20], data.y_test[:20]
    outcome = attack.run(trained, x, y, None, torch.Generator().manual_seed(0))
    attacked = outcome.extras["target"] >= 0
    assert attacked.sum() == 2
    inputs, outputs = outcome.extras["input_distortion"][attacked], outcome.extras["output_distortion"][attacked]
    # C = 0 puts no price on the perturbation: the reconstruction reaches the target's ...
    assert (outputs[:, 0] < 0.3).all()
    # ... and the largest C keeps the perturbation small and the reconstruction near the source's
    assert (inputs[:, -1] < 0.2).all() and (outputs[:, -1] > 0.6).all()
    assert torch.isnan(outcome.extras["input_distortion"][~attacked]).all()


@pytest.mark.parametrize("attack_class", [LatentAttack, OutputAttack])
def test_attacks_pass_the_contract_kit(trained, data, attack_class):
    check_attack(attack_class(**ATTACK), trained, data.x_test[:6], data.y_test[:6])


def test_auddc_on_known_curves():
    x = np.array([0.2, 0.5, 0.9])
    assert auddc(x, np.ones(3)) == pytest.approx(0.8)  # y = 1: the area from x_min to 1
    grid = np.linspace(0, 1, 11)
    assert auddc(grid, 1 - grid) == pytest.approx(0.5)
    # points beyond the source-target distance are left out; the curve ends at (1, min y)
    assert auddc(np.array([0.5, 2.0]), np.array([0.4, 0.0])) == pytest.approx(0.5 * 0.4)


def test_auddc_summarises_the_pairs_by_their_mean_or_median(trained, data):
    from harness.contracts import CellOutcome

    inputs = torch.tensor([[0.2, 0.5], [0.2, 0.5], [0.2, 0.5]], dtype=torch.float64)
    outputs = torch.tensor([[1.0, 1.0], [0.5, 0.5], [-9.0, -9.0]], dtype=torch.float64)
    outcome = outcome_of(OutputAttack(**ATTACK), trained, data.x_test[:3], data.y_test[:3], float("inf"))
    outcome = CellOutcome(**{**outcome.__dict__, "extras": {"input_distortion": inputs, "output_distortion": outputs}})
    areas = [0.8, 0.4, -7.2]  # y constant: (1 - 0.2) * y
    assert AUDDC("mean").evaluate(trained, [outcome]) == pytest.approx(np.mean(areas))
    assert AUDDC("median").evaluate(trained, [outcome]) == pytest.approx(0.4)
    with pytest.raises(ValueError, match="unknown statistic"):
        AUDDC("mode")


def test_metrics_pass_the_contract_kit(trained, data):
    x, y = data.x_test[:10], data.y_test[:10]
    attack = OutputAttack(**ATTACK)
    value = check_metric(AUDDC(), trained, [outcome_of(attack, trained, x, y, float("inf"))])
    assert 0.0 <= value <= 1.0
    assert check_metric(ReconstructionLoss(), trained, [outcome_of(attack, trained, x, y, float("inf"))]) > 0
    assert check_metric(ReconstructionGradient(), trained, [outcome_of(attack, trained, x, y, float("inf"))]) > 0
    assert check_metric(EncoderGradient(), trained, [outcome_of(attack, trained, x, y, float("inf"))]) > 0


def test_dbp_shrinks_the_input_gradient_and_the_encoders_sensitivity(data):
    """On the tiny VAE (6 epochs, 150 digits) lambda2 = 10 cuts the network-path gradient about 3x
    and the encoder's Jacobian about 2x (measured: 0.126 -> 0.042 and 0.30 -> 0.16), at the same
    reconstruction loss within 1%."""
    models = {}
    for dbp in (0.0, 10.0):
        seed_everything(0)
        models[dbp] = vae(data, dbp=dbp, epochs=6)
        seed_everything(0)
        models[dbp].fit(data, make_context())
        models[dbp].eval()
    x, y = data.x_test, data.y_test
    plain, smooth = models[0.0], models[10.0]
    assert ReconstructionGradient().evaluate(smooth, x, y) < 0.5 * ReconstructionGradient().evaluate(plain, x, y)
    assert EncoderGradient().evaluate(smooth, x, y) < 0.75 * EncoderGradient().evaluate(plain, x, y)
    assert ReconstructionLoss().evaluate(smooth, x, y) < 1.02 * ReconstructionLoss().evaluate(plain, x, y)


def test_draw_presets_and_overrides(data):
    def preset_draw(preset, **overrides):
        unset = {"steps": None, "hidden": None, "latent": None, "attention": "", "window": None}
        return DRAW((1, 28, 28), 10, preset=preset, **{**unset, **overrides}, **{**TRAINING, "dbp": 0.0})

    paper = preset_draw("draw16-attention")
    shape = (paper.steps, paper.hidden, paper.attention, paper.window, paper.gmm.means.shape[-1])
    assert shape == (16, 256, True, 12, 256)
    plain = preset_draw("draw16-attention", steps=1, attention="off")
    assert (plain.steps, plain.attention) == (1, False)
    with pytest.raises(ValueError, match="unknown DRAW preset"):
        preset_draw("draw3")


@pytest.mark.slow
def test_small_dbp_suite_runs(cli, tmp_path):
    """The CI suite: every DBP component and a transfer attack, end to end."""
    from pathlib import Path

    from harness.leaderboard import read_leaderboard

    output = tmp_path / "dbp-small.csv"
    code, _, err = cli("run", Path(__file__).parents[1] / "leaderboards" / "dbp-small.toml", "--output", output)
    assert code == 0, err
    rows = read_leaderboard(output)
    autoencoder_attack = rows["attack"].isin(["latent-attack", "output-attack"])
    # the MLP has no encoder: the autoencoder attacks skip it; everything else runs
    assert set(rows[autoencoder_attack & (rows["model"] == "mlp")]["status"]) == {"skipped"}
    ran = rows[~(autoencoder_attack & (rows["model"] == "mlp"))]
    assert set(ran["status"]) == {"ok"}, ran[ran["status"] != "ok"]["message"].tolist()
    autoencoders = ran[autoencoder_attack[ran.index]]
    # (these tiny models' curves are noisy: the area is finite, not necessarily within [0, 1])
    assert np.isfinite(autoencoders[autoencoders["model"] == "vae"]["metric_auddc"]).all()
    assert (ran[ran["model"] != "mlp"]["metric_reconstruction-gradient"] > 0).all()


def test_a_gmm_needs_as_many_samples_per_class_as_components():
    z = torch.tensor([[0.0, 1.0], [1.0, 0.0], [5.0, 5.0], [6.0, 5.0], [5.0, 6.0]])
    labels = torch.tensor([0, 0, 1, 1, 1])
    ClassGMM(2, 2, 2, "diag").fit(z, labels, seed=0)  # class 0 has exactly two: enough
    with pytest.raises(ValueError, match="class 0 has 2 training samples, fewer than the GMM's components"):
        ClassGMM(2, 3, 2, "diag").fit(z, labels, seed=0)
    with pytest.raises(ValueError, match="unknown covariance type 'tied' \\(known: full, diag\\)"):
        ClassGMM(2, 1, 2, "tied")
    with pytest.raises(ValueError, match="gmm_components must be at least 1, got 0"):
        ClassGMM(2, 0, 2, "full")


def test_the_reconstruction_loss_is_per_pixel():
    """Logits of zero: every pixel's Bernoulli NLL is ln 2, whatever the image and its size."""
    from types import SimpleNamespace

    def bernoulli_nll(logits, x):
        return torch.nn.functional.binary_cross_entropy_with_logits(logits, x.flatten(1), reduction="none").sum(1)

    for pixels in (4, 64):
        stub = SimpleNamespace(run=lambda x, sample: (None, None, torch.zeros(len(x), x[0].numel())),
                               reconstruction_loss=bernoulli_nll)
        x = torch.rand(3, 1, 1, pixels).round()
        assert ReconstructionLoss().evaluate(stub, x, None) == pytest.approx(math.log(2.0))


def test_auddc_has_no_value_for_an_attack_without_distortion_curves(trained, data):
    from harness.contracts import CellOutcome

    outcome = outcome_of(OutputAttack(**ATTACK), trained, data.x_test[:3], data.y_test[:3], float("inf"))
    other = CellOutcome(**{**outcome.__dict__, "extras": {}})  # what FGSM or PGD leaves
    assert math.isnan(AUDDC().evaluate(trained, [other]))
