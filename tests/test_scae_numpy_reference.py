"""One forward pass of the SCAE written out in NumPy from the reference's description
(``reference-implementations.md`` (a): ``primary.py``, ``capsule.py``, ``scae.py``), independently
of the port's code, and the port's intermediate tensors asserted against it on a tiny model with
random weights: the part capsules (CNN, attention pooling with the reference's reshape, the
geometric transform), the image likelihood (coloured templates warped by the inverse pose with
aligned corners, the mixture with the background), the object capsules' votes, presences and
scales, and the part likelihood with its posterior."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch

from harness.training import seed_everything
from harness_scae.model import SCAE, capsule_likelihood
from harness_scae.presets import PRESETS

CONFIG = {
    "canvas": 24, "n_part_caps": 3, "n_obj_caps": 2, "template_size": 5, "cnn_channels": 4, "n_part_features": 2,
    "caps_hidden": 8, "n_obj_params": 4, "st_dims": 4, "st_output_dims": 6, "noise_scale": 0.0,
}  # fmt: skip


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def softplus(x):
    return np.log1p(np.exp(x))


def logsumexp(x, axis):
    top = x.max(axis=axis, keepdims=True)
    return (top + np.log(np.exp(x - top).sum(axis=axis, keepdims=True))).squeeze(axis)


def conv_valid(x, weight, bias, stride):
    """snt.Conv2D with VALID padding: x (C, H, W), weight (O, C, k, k)."""
    out_c, _, k, _ = weight.shape
    height = (x.shape[1] - k) // stride + 1
    width = (x.shape[2] - k) // stride + 1
    out = np.zeros((out_c, height, width))
    for i in range(height):
        for j in range(width):
            patch = x[:, i * stride : i * stride + k, j * stride : j * stride + k]
            out[:, i, j] = np.einsum("ockl,ckl->o", weight, patch) + bias
    return out


def geometric_transform(p):
    """``math_ops.geometric_transform(pose, similarity=False)``: six numbers -> [a, b, tx, c, d, ty]."""
    sx, sy = sigmoid(p[0]) + 0.01, sigmoid(p[1]) + 0.01
    theta = p[2] * 2 * math.pi
    shear, tx, ty = np.tanh(p[3] * 5), np.tanh(p[4] * 5), np.tanh(p[5] * 5)
    c, s = np.cos(theta), np.sin(theta)
    return np.array([sx * c + shear * sy * s, -sx * s + shear * sy * c, tx, sy * s, sy * c, ty])


def as_matrix(six):
    return np.vstack([six.reshape(2, 3), [0.0, 0.0, 1.0]])


def warp(template, pose, canvas):
    """The AffineGridWarper's inverse with the resampler: pixel (i, j) of the canvas, at [-1, 1]
    coordinates with aligned corners, reads the template (t, t) bilinearly at inverse(pose) of it,
    zero outside."""
    size = template.shape[-1]
    inverse = np.linalg.inv(as_matrix(pose))
    out = np.zeros((template.shape[0], canvas, canvas))
    for i in range(canvas):
        for j in range(canvas):
            x, y = -1 + 2 * j / (canvas - 1), -1 + 2 * i / (canvas - 1)
            u, v, _ = inverse @ np.array([x, y, 1.0])
            col, row = (u + 1) * (size - 1) / 2, (v + 1) * (size - 1) / 2
            c0, r0 = math.floor(col), math.floor(row)
            for dr in (0, 1):
                for dc in (0, 1):
                    r, c = r0 + dr, c0 + dc
                    if 0 <= r < size and 0 <= c < size:
                        weight = (1 - abs(row - r)) * (1 - abs(col - c))
                        out[:, i, j] += weight * template[:, r, c]
    return out


def weights_of(model):
    return {name: value.detach().double().numpy() for name, value in model.state_dict().items()}


def part_capsules(w, image, n_caps, strides=(2, 2, 1, 1)):
    """``CapsuleImageEncoder`` (conv_att) for one image (C, H, W): poses (M, 6), features, presences."""
    h = image
    for index, stride in enumerate(strides):
        layer = f"part_encoder.cnn.{2 * index}"
        h = np.maximum(conv_valid(h, w[f"{layer}.weight"], w[f"{layer}.bias"], stride), 0)
    h = h + w["part_encoder.bias"]
    h = conv_valid(h, w["part_encoder.values.weight"], w["part_encoder.values.bias"], 1)  # 1x1
    channels = h.reshape(h.shape[0], -1)  # (D * M + M, HW)
    n_dims = (channels.shape[0] - n_caps) // n_caps
    values = channels[: n_dims * n_caps].reshape(n_dims, n_caps, -1)  # [HW, D, M] in the reference's order
    logits = channels[n_dims * n_caps :]  # (M, HW)
    attention = np.exp(logits - logits.max(axis=1, keepdims=True))
    attention /= attention.sum(axis=1, keepdims=True)
    pooled = (values * attention[None]).sum(axis=-1)  # (D, M)
    pooled = pooled.reshape(n_caps, n_dims)  # tf.reshape, not a transpose
    poses = np.stack([geometric_transform(p) for p in pooled[:, :6]])
    return poses, pooled[:, 6:-1], sigmoid(pooled[:, -1])


def image_log_likelihood(w, image, poses, features, presence):
    """``TemplateBasedImageDecoder``: the pixels' log-density under the mixture of the warped,
    coloured templates (scale 1) and the background, summed over pixels."""
    hidden = np.maximum(features @ w["decoder.colour.0.weight"].T + w["decoder.colour.0.bias"], 0)
    colour = np.clip(hidden @ w["decoder.colour.2.weight"].T + w["decoder.colour.2.bias"] + 0.99, 0, 1)  # relu1
    templates = sigmoid(w["decoder.template_logits"]) * colour[:, :, None, None]
    canvas = image.shape[-1]
    means, mixing = [], []
    for m in range(len(poses)):
        means.append(warp(templates[m], poses[m], canvas))
        mixing.append(warp(w["decoder.template_alpha"][m], poses[m], canvas)[0] + math.log(presence[m]))
    means.append(np.broadcast_to(sigmoid(w["decoder.background_value"]), image.shape))
    mixing.append(np.full(image.shape[1:], softplus(w["decoder.background_mixing"][0])))
    means, mixing = np.stack(means), np.stack(mixing)[:, None]  # (M + 1, C, H, W), (M + 1, 1, H, W)
    log_mixing = mixing - logsumexp(mixing, axis=0)[None]
    normal = -0.5 * (image[None] - means) ** 2 - 0.5 * math.log(2 * math.pi)
    return logsumexp(log_mixing + normal, axis=0).sum()


def object_capsules(w, embedding, n_part):
    """``CapsuleLayer`` for one image's object embeddings (O, E): votes (O, M, 6), vote presences
    (O, M), scales (O, M) and the capsules' presences (O,)."""
    votes, vote_presence, scales = [], [], []
    for o, x in enumerate(embedding):
        h = np.maximum(x @ w["capsules.encode.0.weight"][o] + w["capsules.encode.0.bias"][o], 0)
        h = h @ w["capsules.encode.2.weight"][o] + w["capsules.encode.2.bias"][o]  # no final activation
        h = np.append(h, 1.0)  # caps_exist
        h = np.maximum(h @ w["capsules.decode.0.weight"][o] + w["capsules.decode.0.bias"][o], 0)
        out = h @ w["capsules.decode.2.weight"][o]  # the last layer is unbiased
        dynamic, rest = out[: 6 * n_part].reshape(n_part, 6), out[6 * n_part :] + w["capsules.output_bias"][o]
        ccr, caps_logit = rest[:6], rest[6]
        vote_logit, scale = rest[7 : 7 + n_part], rest[7 + n_part :]
        relations = [as_matrix(geometric_transform(d)) for d in dynamic + w["capsules.static_relations"][o]]
        object_pose = as_matrix(geometric_transform(ccr))
        votes.append(np.stack([(object_pose @ r)[:2].reshape(6) for r in relations]))
        vote_presence.append(sigmoid(caps_logit) * sigmoid(vote_logit))
        scales.append(softplus(scale + 0.5) + 0.01)
    vote_presence = np.stack(vote_presence)
    return np.stack(votes), vote_presence, np.stack(scales), vote_presence.max(axis=1)


def part_log_likelihood(poses, part_presence, votes, vote_presence, scales):
    """``CapsuleLikelihood``: per part, a mixture over the objects' votes (unnormalised mixing
    logits log vote presence) and a dummy; weighted by part presence and summed; and the posterior
    over objects of each part, the dummy dropped (M, O)."""
    log_prob = (-0.5 * ((poses[None] - votes) / scales[..., None]) ** 2 - np.log(scales[..., None])
                - 0.5 * math.log(2 * math.pi)).sum(-1)  # fmt: skip
    dummy = -2 * math.log(10)
    joint = np.concatenate([np.log(vote_presence) + log_prob, np.full((1, poses.shape[0]), 2 * dummy)])  # (O + 1, M)
    per_part = logsumexp(joint, axis=0)
    posterior = np.exp(joint - per_part[None])[:-1].T
    return (per_part * part_presence).sum(), posterior


def tiny_model():
    seed_everything(3)
    config = dataclasses.replace(PRESETS["small"], **CONFIG)
    model = SCAE((1, config.canvas, config.canvas), 10, preset="small", head="posterior-kmeans", **CONFIG)
    assert model.config == config
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():  # every weight random and away from its initial zeros
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype) * 0.3)
    return model.double().eval()


def test_the_ports_forward_pass_is_the_references():
    model = tiny_model()
    w = weights_of(model)
    images = torch.rand(2, 1, 24, 24, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        poses, features, presence = model.part_encoder(images)
        image_ll = model.decoder.log_likelihood(images, poses, features, presence)
        embeddings = torch.randn(2, 2, CONFIG["st_output_dims"], generator=torch.Generator().manual_seed(2),
                                 dtype=torch.float64)  # fmt: skip
        objects = model.capsules(embeddings)
        part_ll, posterior = capsule_likelihood(poses, presence, objects)
    for b, image in enumerate(images.numpy()):
        ref_poses, ref_features, ref_presence = part_capsules(w, image, CONFIG["n_part_caps"])
        np.testing.assert_allclose(poses[b].flatten(-2).numpy(), ref_poses, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(features[b].numpy(), ref_features, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(presence[b].numpy(), ref_presence, rtol=1e-9, atol=1e-12)
        ref_image_ll = image_log_likelihood(w, image, ref_poses, ref_features, ref_presence)
        np.testing.assert_allclose(image_ll[b].item(), ref_image_ll, rtol=1e-9)
        votes, vote_presence, scales, caps_presence = object_capsules(w, embeddings[b].numpy(), CONFIG["n_part_caps"])
        np.testing.assert_allclose(objects.votes[b].flatten(-2).numpy(), votes, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(objects.vote_presence[b].numpy(), vote_presence, rtol=1e-9)
        np.testing.assert_allclose(objects.scales[b].numpy(), scales, rtol=1e-9)
        np.testing.assert_allclose(objects.presence[b].numpy(), caps_presence, rtol=1e-9)
        ref_part_ll, ref_posterior = part_log_likelihood(ref_poses, ref_presence, votes, vote_presence, scales)
        np.testing.assert_allclose(part_ll[b].item(), ref_part_ll, rtol=1e-9)
        np.testing.assert_allclose(posterior[b].numpy(), ref_posterior, rtol=1e-9, atol=1e-12)
