"""The SGM plugin: the input update, when it starts, lock-step with the control, the paper's
networks, the contract kit, and the small CI suite."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from harness.contracts import StandardTraining, TrainingState
from harness.leaderboard import read_leaderboard
from harness.testing import check_defense, check_model, make_context, reference_builder, tiny_digits, training_state
from harness.training import seed_everything
from harness_sgm import defense as sgm
from harness_sgm.defense import SmoothGradientMethod, input_gradient_step
from harness_sgm.models import ConvolutionalNetwork, DeepNetwork

LEADERBOARDS = Path(__file__).parents[1] / "leaderboards"
SGM = {"input_lr": 0.2, "sign": False, "clip": False, "start_epoch": 0}


@pytest.fixture(scope="module")
def data():
    return tiny_digits(n_train=200, n_test=40, size=28)


def small_dnn(data, epochs: int = 3) -> DeepNetwork:
    return DeepNetwork(data.input_shape, 10, hidden=[64, 32], dropout=0.5, epochs=epochs, batch_size=32, lr=1e-3)


def trained_state(data) -> TrainingState:
    seed_everything(0)
    model = small_dnn(data, epochs=2)
    ctx = make_context(0)
    model.fit(data, ctx)
    return training_state(model, data, ctx)


def own_loss_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Each sample's gradient of its own cross-entropy, one sample at a time, in evaluation mode."""
    model.eval()
    gradients = []
    for sample, label in zip(x, y):
        sample = sample.unsqueeze(0).clone().requires_grad_()
        loss = nn.functional.cross_entropy(model(sample), label.unsqueeze(0))
        gradients.append(torch.autograd.grad(loss, sample)[0])
    return torch.cat(gradients)


@pytest.mark.parametrize("sign", [False, True])
def test_one_update_moves_each_input_by_the_input_rate_times_its_own_loss_gradient(data, sign):
    state = trained_state(data)
    x, y = data.x_train[:50], data.y_train[:50]
    expected_step = own_loss_gradients(state.model, x, y)
    if sign:
        expected_step = expected_step.sign()
    state.model.train()
    state.model.zero_grad(set_to_none=True)
    moved = input_gradient_step(state.model, x, y, state, 0.2, sign, clip=False)
    assert torch.allclose(moved, x + 0.2 * expected_step, atol=1e-6)
    assert state.model.training  # the mode is restored
    assert all(p.grad is None for p in state.model.parameters())  # only input gradients were taken
    assert not torch.equal(moved, x)


def test_the_batch_mean_scale_divides_each_step_by_its_batch_length(data):
    """The authors' code: the gradient of the batch's mean loss, so each sample moves by input_lr / b
    times its own gradient (b = 32 here; the last of the 50 samples' batches holds 18)."""
    state = trained_state(data)
    x, y = data.x_train[:50], data.y_train[:50]
    own = own_loss_gradients(state.model, x, y)
    lengths = torch.tensor([32] * 32 + [18] * 18, dtype=x.dtype).view(-1, 1, 1, 1)
    moved = input_gradient_step(state.model, x, y, state, 0.2, sign=False, clip=False, scale="batch-mean")
    assert torch.allclose(moved, x + 0.2 * own / lengths, atol=1e-7)
    signed = input_gradient_step(state.model, x, y, state, 0.2, sign=True, clip=False, scale="batch-mean")
    assert torch.allclose(signed, x + 0.2 * own.sign(), atol=1e-6)  # the scale does not change a sign
    with pytest.raises(ValueError, match="scale must be one of"):
        SmoothGradientMethod(**SGM, scale="sum")


def test_keras_cross_entropy_clips_the_probabilities_and_so_the_gradient():
    from harness_sgm.attacks import keras_cross_entropy

    logits = torch.tensor([[2.0, 0.0], [30.0, 0.0]], requires_grad=True)
    loss = keras_cross_entropy(logits, torch.tensor([0, 0]))
    assert loss[0].item() == pytest.approx(-torch.log_softmax(torch.tensor([2.0, 0.0]), 0)[0].item())
    assert loss[1].item() == pytest.approx(-torch.log(torch.tensor(1.0 - 1e-7)).item(), rel=1e-3)
    (gradient,) = torch.autograd.grad(loss.sum(), logits)
    assert gradient[0].abs().sum() > 0 and gradient[1].abs().sum() == 0  # the clip's dead zone


def test_the_papers_fgsm_steps_in_training_mode_and_leaves_the_statistics_alone(data):
    from harness_sgm.attacks import PaperFGSM

    state = trained_state(data)
    model = state.model.eval()
    x, y = data.x_test[:20], data.y_test[:20]
    before = {name: buffer.clone() for name, buffer in model.named_buffers()}
    seed_everything(3)
    outcome = PaperFGSM().run(model, x, y, 0.1)
    assert not model.training  # the mode is restored
    assert all(torch.equal(buffer, before[name]) for name, buffer in model.named_buffers())
    moved = (outcome.x_adv - x).abs()
    assert moved.max() <= 0.1 + 1e-6 and outcome.x_adv.min() >= 0 and outcome.x_adv.max() <= 1
    seed_everything(3)
    again = PaperFGSM().run(model, x, y, 0.1).x_adv
    seed_everything(4)
    other = PaperFGSM().run(model, x, y, 0.1).x_adv
    assert torch.equal(again, outcome.x_adv) and not torch.equal(other, outcome.x_adv)  # dropout drawn: train mode


def test_the_paper_leaves_updated_inputs_unbounded_and_clip_keeps_them_in_range(data):
    state = trained_state(data)
    x, y = data.x_train, data.y_train
    unbounded = input_gradient_step(state.model, x, y, state, 50.0, False, clip=False)
    clipped = input_gradient_step(state.model, x, y, state, 50.0, False, clip=True)
    assert unbounded.min() < 0 or unbounded.max() > 1
    assert clipped.min() >= 0 and clipped.max() <= 1
    assert torch.equal(clipped, unbounded.clamp(0, 1))


def test_updates_start_at_the_configured_epoch_and_leave_labels_and_dataset_alone(data, monkeypatch):
    calls = []
    original = sgm.input_gradient_step

    def record(model, x, y, state, *args):
        calls.append((state.epoch, x.clone(), y.clone()))
        return original(model, x, y, state, *args)

    monkeypatch.setattr(sgm, "input_gradient_step", record)
    x_train, y_train, x_test, y_test = (t.clone() for t in (data.x_train, data.y_train, data.x_test, data.y_test))
    seed_everything(0)
    model = small_dnn(data, epochs=5)
    SmoothGradientMethod(**{**SGM, "start_epoch": 2}).train(model, data, make_context(0))
    # after epochs 2 and 3; not after the last, which no epoch would train on
    assert [epoch for epoch, _, _ in calls] == [2, 3]
    assert torch.equal(calls[0][1], x_train) and not torch.equal(calls[1][1], x_train)  # epoch 3 saw moved inputs
    assert all(torch.equal(labels, y_train) for _, _, labels in calls)
    for kept, now in ((x_train, data.x_train), (y_train, data.y_train), (x_test, data.x_test), (y_test, data.y_test)):
        assert torch.equal(kept, now)


def test_control_and_sgm_of_a_seed_are_in_lock_step_until_the_first_update(data):
    """Same seed: same initial weights, batches and dropout masks; with one epoch (no update) the
    two trained models are identical."""
    weights = []
    for defense in (StandardTraining(), SmoothGradientMethod(**SGM)):
        seed_everything(3)
        model = small_dnn(data, epochs=1)
        weights.append({k: v.clone() for k, v in model.state_dict().items()})
        defense.train(model, data, make_context(3))
        weights.append(model.state_dict())
    initial_control, trained_control, initial_sgm, trained_sgm = weights
    for key in initial_control:
        assert torch.equal(initial_control[key], initial_sgm[key])
        assert torch.equal(trained_control[key], trained_sgm[key])


def test_sgm_passes_the_contract_kit(data):
    check_defense(SmoothGradientMethod(**SGM), reference_builder(data), data)
    signed = SmoothGradientMethod(**{**SGM, "sign": True, "clip": True, "start_epoch": 1})
    check_defense(signed, reference_builder(data), data)
    with pytest.raises(ValueError, match="start_epoch"):
        SmoothGradientMethod(**{**SGM, "start_epoch": -1})


def test_the_papers_networks_and_the_contract_kit(data):
    training = {"dropout": 0.5, "epochs": 1, "batch_size": 128, "lr": 1e-3}
    dnn = DeepNetwork((1, 28, 28), 10, hidden=[2500, 2000, 1500, 1000, 500], **training)
    linear = [(m.in_features, m.out_features) for m in dnn.modules() if isinstance(m, nn.Linear)]
    assert linear == [(784, 2500), (2500, 2000), (2000, 1500), (1500, 1000), (1000, 500), (500, 10)]
    assert sum(isinstance(m, nn.BatchNorm1d) for m in dnn.modules()) == 5
    assert sum(isinstance(m, nn.Dropout) and m.p == 0.5 for m in dnn.modules()) == 5
    cnn = ConvolutionalNetwork((1, 28, 28), 10, channels=[64, 64], kernel=5, hidden=1024, **training)
    convs = [(m.in_channels, m.out_channels, m.kernel_size) for m in cnn.modules() if isinstance(m, nn.Conv2d)]
    assert convs == [(1, 64, (5, 5)), (64, 64, (5, 5))]
    assert cnn.head[1].in_features == 64 * 4 * 4 and cnn.head[1].out_features == 1024
    assert cnn(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    with pytest.raises(ValueError, match="do not fit"):
        ConvolutionalNetwork((1, 8, 8), 10, channels=[8, 8], kernel=5, hidden=16, **training)
    check_model(lambda: small_dnn(data, epochs=2), data)
    check_model(
        lambda: ConvolutionalNetwork(data.input_shape, 10, channels=[4, 4], kernel=5, hidden=16, dropout=0.5, epochs=2,
                                     batch_size=32, lr=1e-3),
        data,
    )


@pytest.mark.slow
def test_small_sgm_suite_runs_with_control_and_sgm_in_lock_step(cli, tmp_path, write_suite):
    code, _, err = cli("run", LEADERBOARDS / "sgm-small.toml", "--output", tmp_path / "sgm-small.csv")
    assert code == 0, err
    rows = read_leaderboard(tmp_path / "sgm-small.csv")
    assert set(rows["status"]) == {"ok"}, rows[rows["status"] != "ok"]["message"].tolist()
    assert set(rows["defense"]) == {"none", "sgm", "sgm-sign"}
    # one epoch, so no update: through the runner, SGM and its control give the same rows
    one_epoch = (LEADERBOARDS / "sgm-small.toml").read_text().replace("epochs = 3", "epochs = 1")
    code, _, err = cli("run", write_suite(one_epoch), "--output", tmp_path / "one-epoch.csv")
    assert code == 0, err
    rows = read_leaderboard(tmp_path / "one-epoch.csv")
    columns = ["model", "attack", "eps", "clean_accuracy", "robust_accuracy", "mean_perturbation_l2"]
    control = rows[rows["defense"] == "none"][columns].reset_index(drop=True)
    assert control.equals(rows[rows["defense"] == "sgm"][columns].reset_index(drop=True))


@pytest.mark.parametrize("options", [{"sign": True}, {"clip": True}, {"scale": "batch-mean"}])
def test_the_defense_moves_the_inputs_with_its_own_sign_clip_and_scale(data, options):
    """Each option reaches the update: the stored inputs after an epoch are input_gradient_step's
    with exactly these options, and differ from the plain update's."""
    state = trained_state(data)
    state.epoch, x = 0, state.x_train.clone()
    chosen = {**SGM, "input_lr": 20.0, **options}
    SmoothGradientMethod(**chosen).epoch_finished(state)
    expected = input_gradient_step(state.model, x, state.y_train, state, 20.0, chosen["sign"], chosen["clip"],
                                   chosen.get("scale", "per-sample"))
    plain = input_gradient_step(state.model, x, state.y_train, state, 20.0, False, False, "per-sample")
    assert torch.equal(state.x_train, expected) and not torch.equal(state.x_train, plain)


def test_the_papers_fgsm_steps_up_the_clipped_cross_entropy_by_eps_times_its_sign():
    """A linear model without dropout: x_adv = clip(x + eps * sign(d loss / dx), 0, 1), by hand."""
    from harness_sgm.attacks import PaperFGSM

    class Linear(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.tensor([[1.0, -2.0], [-1.0, 0.5]]))

        def logits(self, x):
            return x.flatten(1) @ self.weight

    x = torch.tensor([[0.5, 0.5], [0.02, 0.98]]).view(2, 1, 1, 2)
    y = torch.tensor([0, 1])
    # d(-log p_y)/dx = W (p - onehot(y)); the true class's column pulls one way, the other's the other
    x_adv = PaperFGSM().generate(Linear(), x, y, 0.1, generator=torch.Generator())
    expected = torch.tensor([[0.4, 0.6], [0.12, 0.88]]).view(2, 1, 1, 2)
    assert torch.allclose(x_adv, expected)
    with pytest.raises(ValueError, match="the paper's FGSM is an Linf attack, not 'l2'"):
        PaperFGSM("l2")


def test_keras_cross_entropy_caps_the_loss_of_a_hopeless_sample():
    from harness_sgm.attacks import keras_cross_entropy

    logits = torch.tensor([[0.0, 40.0]])  # true class 0 has probability e^-40, clipped up to 1e-7
    assert keras_cross_entropy(logits, torch.tensor([0])).item() == pytest.approx(-torch.log(torch.tensor(1e-7)).item())


def test_the_papers_fgsm_leaves_a_sample_in_the_clips_dead_zone_where_it_is():
    """True-class probability above 1 - 1e-7: the clipped cross-entropy has no gradient, so no step."""
    from harness_sgm.attacks import PaperFGSM

    class Confident(nn.Module):
        def logits(self, x):
            return torch.cat([40 * x.flatten(1).sum(1, keepdim=True), torch.zeros(len(x), 1)], dim=1)

    x = torch.full((1, 1, 1, 2), 0.5)
    assert torch.equal(PaperFGSM().generate(Confident(), x, torch.tensor([0]), 0.1, generator=torch.Generator()), x)
