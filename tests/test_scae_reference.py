"""The SCAE port against the reference's formulas: TF1's RMSProp, the part encoder's channel
grouping, Sonnet's initialisation, the attention mask, the set transformer's input and the
google-research pad-and-shift pipeline."""

from __future__ import annotations

import math

import pytest
import torch

from harness.contracts import Batch
from harness.testing import tiny_digits, training_state
from harness.training import seed_everything
from harness_scae.model import SCAE, PartEncoder, PresenceAttention, geometric_transform, sonnet_init, translate
from harness_scae.optim import TF1RMSprop
from harness_scae.presets import PRESETS


def test_tf1_rmsprop_follows_the_update_rule_by_hand():
    param = torch.nn.Parameter(torch.tensor([1.0], dtype=torch.float64))
    optimizer = TF1RMSprop([param], lr=0.1, decay=0.9, momentum=0.5, eps=0.01)
    expected, mean_square, momentum = 1.0, 1.0, 0.0
    for _ in range(3):
        optimizer.zero_grad()
        (2.0 * param.square()).sum().backward()  # gradient 4p
        grad = 4.0 * expected
        mean_square = 0.9 * mean_square + 0.1 * grad**2
        momentum = 0.5 * momentum + 0.1 * grad / math.sqrt(mean_square + 0.01)
        expected -= momentum
        optimizer.step()
        assert param.item() == pytest.approx(expected, rel=1e-12)


def test_tf1_rmsprop_is_not_torchs():
    """The first step of TF1's (mean square from 1) and torch's (from 0) differ by far."""
    def first_step(optimizer_class, **options):
        param = torch.nn.Parameter(torch.tensor([1.0], dtype=torch.float64))
        optimizer = optimizer_class([param], lr=1e-3, **options)
        (0.01 * param).sum().backward()
        optimizer.step()
        return 1.0 - param.item()

    tf1 = first_step(TF1RMSprop, momentum=0.9, eps=1e-6)
    assert tf1 == pytest.approx(1e-3 * 0.01 / math.sqrt(0.9 + 0.1 * 1e-4 + 1e-6), rel=1e-9)
    assert first_step(torch.optim.RMSprop, momentum=0.9, eps=1e-6) > 50 * tf1


def test_tf1_rmsprop_refuses_bad_settings():
    with pytest.raises(ValueError, match="invalid TF1RMSprop"):
        TF1RMSprop([torch.nn.Parameter(torch.zeros(1))], lr=0.1, decay=1.5)


def small_config(**changes):
    import dataclasses

    return dataclasses.replace(PRESETS["small"], **changes)


def test_part_encoder_pools_each_capsules_values_with_the_references_attention_maps():
    """Capsule i's value j is channel d * M + m of the 1x1 convolution pooled with attention map m,
    where D * i + j = d * M + m (the reference's reshape of a (D, M) array to (M, D))."""
    seed_everything(0)
    config = small_config(noise_scale=0.0)
    encoder = PartEncoder(1, config).eval()
    image = torch.rand(2, 1, config.canvas, config.canvas)
    poses, features, presence = encoder(image)
    h = encoder.values(encoder.cnn(image) + encoder.bias).flatten(2)  # (B, D * M + M, HW)
    n_caps, n_dims = encoder.n_caps, encoder.n_dims
    expected = torch.empty(2, n_caps, n_dims)
    for i in range(n_caps):
        for j in range(n_dims):
            d, m = divmod(n_dims * i + j, n_caps)
            weights = h[:, n_dims * n_caps + m].softmax(dim=-1)
            expected[:, i, j] = (h[:, d * n_caps + m] * weights).sum(dim=-1)
    torch.testing.assert_close(features, expected[..., 6:-1])
    torch.testing.assert_close(presence, torch.sigmoid(expected[..., -1]))
    torch.testing.assert_close(poses, geometric_transform(expected[..., :6]))


def test_sonnet_initialisation():
    seed_everything(0)
    model = SCAE((1, 24, 24), 10, preset="small", head="posterior-kmeans")
    layers = [m for m in model.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
    assert layers
    for layer in layers:
        std = 1.0 / math.sqrt(layer.weight[0].numel())
        assert layer.weight.abs().max() <= 2 * std + 1e-7
        assert torch.all(layer.bias == 0)
    big = torch.nn.Linear(400, 300)
    sonnet_init(big)
    # a normal truncated at two stds has std 0.880 of the untruncated one
    assert big.weight.std().item() == pytest.approx(0.880 / 20, rel=0.02)
    capsule_weight = model.capsules.encode[0].weight
    assert capsule_weight.abs().max() <= 2 / math.sqrt(capsule_weight.shape[1]) + 1e-7
    relations = model.capsules.static_relations
    limit = math.sqrt(6.0 / (relations.shape[0] * (relations.shape[1] + 6)))
    assert relations.abs().max() <= limit and relations.abs().max() > 0.9 * limit


def attention_weights(mask: str, presence: torch.Tensor) -> torch.Tensor:
    """The attention weights of one query over parts of equal keys (zero logits but for the mask)."""
    attention = PresenceAttention(4, 4, 1, mask)
    captured = {}
    original = torch.Tensor.softmax

    def recording_softmax(tensor, dim):
        captured["weights"] = original(tensor, dim=dim)
        return captured["weights"]

    with torch.no_grad():
        for layer in (attention.query, attention.key):
            layer.weight.zero_()
            layer.bias.zero_()
        torch.Tensor.softmax = recording_softmax
        try:
            attention(torch.ones(1, 1, 4), torch.ones(1, len(presence), 4), presence[None])
        finally:
            torch.Tensor.softmax = original
    return captured["weights"].flatten()


def test_the_references_mask_attends_to_the_most_present_part_and_the_soft_one_weighs_by_presence():
    presence = torch.tensor([0.97, 0.99, 0.5, 1.0 - 1e-7])
    reference = attention_weights("reference", presence[:3])
    torch.testing.assert_close(reference, torch.tensor([0.0, 1.0, 0.0]))
    soft = attention_weights("soft", presence)
    torch.testing.assert_close(soft, presence / presence.sum())


def test_the_set_transformer_reads_the_affine_poses():
    seed_everything(0)
    model = SCAE((1, 24, 24), 10, preset="small", head="posterior-kmeans").eval()
    seen = {}
    original = model.set_transformer.forward
    model.set_transformer.forward = lambda parts, presence: seen.setdefault("parts", parts) is not None and original(
        parts, presence
    )
    image = torch.rand(3, 1, 24, 24)
    model.encode(image, render=False)
    poses, features, presence = model.part_encoder(image)
    parts = seen["parts"]
    torch.testing.assert_close(parts[..., :6], poses.flatten(-2))
    torch.testing.assert_close(parts[..., 6], 1.0 - presence)
    torch.testing.assert_close(parts[..., 7 : 7 + features.shape[-1]], features)


def test_pad_puts_the_image_in_the_middle_of_the_canvas_and_translate_moves_it():
    model = SCAE((1, 20, 20), 10, preset="small", head="posterior-kmeans", canvas_fit="pad")
    image = torch.rand(1, 1, 20, 20)
    canvas = model.canvas(image)
    assert canvas.shape == (1, 1, 24, 24)
    torch.testing.assert_close(canvas[..., 2:22, 2:22], image)
    assert canvas.sum().item() == pytest.approx(image.sum().item(), rel=1e-6)
    resized = SCAE((1, 20, 20), 10, preset="small", head="posterior-kmeans").canvas(image)
    assert resized.shape == (1, 1, 24, 24) and not torch.equal(resized[..., 2:22, 2:22], image)
    moved = translate(canvas.expand(2, -1, -1, -1), torch.tensor([[2, -1], [0, 0]]))
    torch.testing.assert_close(moved[0, :, 4:24, 1:21], image[0])  # two down, one left
    torch.testing.assert_close(moved[1], canvas[0])
    with pytest.raises(ValueError, match="at most the canvas"):
        model.canvas(torch.rand(1, 1, 30, 30))


class Seen(Exception):
    """Stops the loss once the encoder has been called."""


def test_training_shifts_input_and_target_alike():
    seed_everything(0)
    model = SCAE((1, 24, 24), 10, preset="small", head="posterior-kmeans", max_shift=3).train()
    seen = {}

    def recording_encode(x, target=None, **_):
        seen.update(x=x, target=target)
        raise Seen

    model.encode = recording_encode
    x = torch.zeros(4, 1, 24, 24)
    x[:, :, 10:14, 10:14] = 1.0
    state = training_state(model, tiny_digits(n_train=20, n_test=10, size=24))
    state.batch = Batch(x, torch.zeros(4, dtype=torch.int64), torch.arange(4), target=x * 0.5)
    with pytest.raises(Seen):
        model.loss(x, state.batch.y, state)
    assert not torch.equal(seen["x"], x)
    torch.testing.assert_close(seen["target"], seen["x"] * 0.5)
    torch.testing.assert_close(seen["x"].sum(dim=(1, 2, 3)), x.sum(dim=(1, 2, 3)))
