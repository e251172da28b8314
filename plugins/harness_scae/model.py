"""The stacked capsule autoencoder (Kosiorek et al., 2019): part capsules rendered from learned
templates, object capsules from a set transformer, and four evaluation heads.

Ported from the reference TensorFlow code (``capsules/primary.py``, ``models/scae.py``,
``capsule.py``) as described in ``reference-implementations.md`` (a), avoiding the known bugs of
the PyTorch port (b): the capsule MLPs end without an activation and keep their hidden biases,
templates are rendered with the inverse pose and the align-corners convention, each probe has its
own softmax once, and the posterior sparsity term is weighted by its own weights. The weights start
as Sonnet 1 starts them (:func:`sonnet_init`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from harness.contracts import LOGITS, LOSS, Dataset, Model, TrainContext, TrainingSettings, TrainingState
from harness_scae.optim import TF1RMSprop
from harness_scae.presets import SOURCES, Config, head_source, head_uses_kmeans, resolve_config

PRESENCES = "capsule_presences"
"""``model.capsule_presences(x, source)``: object-capsule presences (B, O) in [0, 1], ``source``
"prior" or "posterior"; differentiable in ``x``."""
CLASSIFY = "classify_presences"
"""``model.classify_presences(presences, head=None)``: labels (B,) from presences of the head's source."""

# --- geometry -----------------------------------------------------------------------------------


def geometric_transform(params: torch.Tensor) -> torch.Tensor:
    """Six unconstrained numbers -> the top two rows of an affine matrix (..., 2, 3): positive
    scales, rotation, shear and a translation in [-1, 1] (the reference's non-similarity form)."""
    scale_x, scale_y, theta, shear, trans_x, trans_y = params.unbind(-1)
    scale_x, scale_y = torch.sigmoid(scale_x) + 1e-2, torch.sigmoid(scale_y) + 1e-2
    trans_x, trans_y, shear = torch.tanh(trans_x * 5.0), torch.tanh(trans_y * 5.0), torch.tanh(shear * 5.0)
    theta = theta * (2.0 * math.pi)
    cos, sin = torch.cos(theta), torch.sin(theta)
    rows = [
        scale_x * cos + shear * scale_y * sin, -scale_x * sin + shear * scale_y * cos, trans_x,
        scale_y * sin, scale_y * cos, trans_y,
    ]
    return torch.stack(rows, dim=-1).unflatten(-1, (2, 3))


def compose(outer: torch.Tensor, inner: torch.Tensor) -> torch.Tensor:
    """``outer @ inner`` for affine matrices given by their top two rows (..., 2, 3)."""
    # Written out elementwise: batched 2x2 matrix products are far slower on a CPU.
    translation = torch.zeros_like(inner)
    translation[..., 2] = 1.0
    return outer[..., 0:1] * inner[..., 0:1, :] + outer[..., 1:2] * inner[..., 1:2, :] + outer[..., 2:3] * translation


def invert(affine: torch.Tensor) -> torch.Tensor:
    """The inverse of affine matrices given by their top two rows (..., 2, 3)."""
    a, b, tx = affine[..., 0, 0], affine[..., 0, 1], affine[..., 0, 2]
    c, d, ty = affine[..., 1, 0], affine[..., 1, 1], affine[..., 1, 2]
    det = a * d - b * c
    ia, ib, ic, id_ = d / det, -b / det, -c / det, a / det
    rows = [ia, ib, -(ia * tx + ib * ty), ic, id_, -(ic * tx + id_ * ty)]
    return torch.stack(rows, dim=-1).unflatten(-1, (2, 3))


# --- initialisation -----------------------------------------------------------------------------


def truncated_normal_(tensor: torch.Tensor, fan_in: int) -> torch.Tensor:
    """Sonnet 1's default weights: a normal of std 1/sqrt(fan_in) truncated at two stds (PyTorch's
    ``trunc_normal_`` truncates at +-2 absolute unless told otherwise)."""
    std = 1.0 / math.sqrt(fan_in)
    return nn.init.trunc_normal_(tensor, std=std, a=-2 * std, b=2 * std)


def sonnet_init(module: nn.Module) -> None:
    """Every linear and convolutional layer as ``snt.Linear`` and ``snt.Conv2D`` start: truncated
    normal weights (:func:`truncated_normal_`) and zero biases (PyTorch's default biases are not zero)."""
    for layer in module.modules():
        if isinstance(layer, (nn.Linear, nn.Conv2d)):
            truncated_normal_(layer.weight, layer.weight[0].numel())
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


# --- part capsule autoencoder -------------------------------------------------------------------


class PartEncoder(nn.Module):
    """CNN with attention pooling: per part capsule a pose (6), special features and a presence."""

    def __init__(self, channels_in: int, config: Config):
        super().__init__()
        width, strides = config.cnn_channels, (2, 2, 1, 1)
        layers: list[nn.Module] = []
        for index, stride in enumerate(strides):
            layers += [nn.Conv2d(channels_in if index == 0 else width, width, 3, stride=stride), nn.ReLU()]
        self.cnn = nn.Sequential(*layers)
        size = config.canvas
        for stride in strides:
            size = (size - 3) // stride + 1
        if size < 1:
            raise ValueError(f"canvas {config.canvas} is too small for the part CNN (at least 23 pixels)")
        self.bias = nn.Parameter(torch.zeros(width, size, size))
        self.n_caps = config.n_part_caps
        self.n_dims = 6 + config.n_part_features + 1
        # One 1x1 convolution gives n_dims values per capsule and one attention logit per capsule at
        # each location.
        self.values = nn.Conv2d(width, self.n_caps * (self.n_dims + 1), 1)
        self.noise_scale = config.noise_scale
        self.noise_enabled = config.noise_scale > 0

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Poses (B, M, 2, 3), features (B, M, F) and presences (B, M)."""
        h = self.values(self.cnn(image) + self.bias).flatten(2)  # (B, D * M + M, HW)
        batch = h.shape[0]
        values, attention = h.split([self.n_dims * self.n_caps, self.n_caps], dim=1)
        # As the reference: channel d * M + m is value d pooled with attention map m, and the pooled
        # (D, M) array is then reshaped, not transposed, to (M, D). So capsule i's value j is pooled
        # with map (D * i + j) mod M: each capsule's values come from D different maps.
        values = values.view(batch, self.n_dims, self.n_caps, -1)
        weights = attention.view(batch, 1, self.n_caps, -1).softmax(dim=-1)
        pooled = (values * weights).sum(dim=-1).reshape(batch, self.n_caps, self.n_dims)
        pose, features, presence_logit = pooled.split([6, self.n_dims - 7, 1], dim=-1)
        presence_logit = presence_logit.squeeze(-1)
        if self.training and self.noise_enabled:
            presence_logit = presence_logit + (torch.rand_like(presence_logit) - 0.5) * self.noise_scale
        return geometric_transform(pose), features, torch.sigmoid(presence_logit)


class TemplateDecoder(nn.Module):
    """Renders the image as a per-pixel mixture of affinely warped, coloured templates and a
    constant background, each a Normal with scale 1."""

    def __init__(self, channels: int, config: Config):
        super().__init__()
        size, n = config.template_size, config.n_part_caps
        # Orthogonal initial logits, min-max scaled to [0, 1] (the reference's initialisation).
        logits = torch.empty(n, size * size)
        nn.init.orthogonal_(logits)
        logits = (logits - logits.min()) / (logits.max() - logits.min())
        self.template_logits = nn.Parameter(logits.view(n, 1, size, size).repeat(1, channels, 1, 1))
        self.template_alpha = nn.Parameter(torch.zeros(n, 1, size, size))
        self.colour = nn.Sequential(nn.Linear(config.n_part_features, 32), nn.ReLU(), nn.Linear(32, channels))
        self.background_value = nn.Parameter(nn.init.xavier_uniform_(torch.empty(1, 1)).view(1))
        self.background_mixing = nn.Parameter(torch.zeros(1))
        self.canvas = config.canvas

    def templates(self, features: torch.Tensor) -> torch.Tensor:
        """Coloured templates (B, M, C, t, t); colours through 'relu1' with the reference's +0.99."""
        colour = (self.colour(features) + 0.99).clamp(0.0, 1.0)
        return torch.sigmoid(self.template_logits) * colour[..., None, None]

    def warp(self, images: torch.Tensor, poses: torch.Tensor) -> torch.Tensor:
        """Place templates (B, M, C, t, t) on the canvas with poses (B, M, 2, 3) mapping template to
        image coordinates: sample through the inverse pose, corners aligned, zero outside."""
        batch, n, channels = images.shape[:3]
        theta = invert(poses).reshape(batch * n, 2, 3)
        size = (batch * n, channels, self.canvas, self.canvas)
        grid = F.affine_grid(theta, size, align_corners=True)
        warped = F.grid_sample(images.reshape(batch * n, channels, *images.shape[-2:]), grid, align_corners=True)
        return warped.view(batch, n, channels, self.canvas, self.canvas)

    def log_likelihood(
        self, target: torch.Tensor, poses: torch.Tensor, features: torch.Tensor, presence: torch.Tensor
    ) -> torch.Tensor:
        """log p(target) per image (B,): the mixture density summed over pixels and channels."""
        batch, channels = target.shape[:2]
        # Templates and their alpha channel are warped together, in one sampling pass.
        stacked = torch.cat([self.templates(features), self.template_alpha.expand(batch, -1, -1, -1, -1)], dim=2)
        templates, alpha = self.warp(stacked, poses).split([channels, 1], dim=2)  # (B, M, C | 1, H, W)
        mixing = alpha + safe_log(presence)[..., None, None, None]
        background_mixing = F.softplus(self.background_mixing).view(1, 1, 1, 1, 1).expand(batch, 1, *alpha.shape[2:])
        mixing = torch.cat([mixing, background_mixing], dim=1).log_softmax(dim=1)
        background = torch.sigmoid(self.background_value).view(1, 1, 1, 1, 1).expand(batch, 1, *templates.shape[2:])
        means = torch.cat([templates, background], dim=1)
        normal = -0.5 * (target.unsqueeze(1) - means) ** 2 - 0.5 * math.log(2 * math.pi)
        return torch.logsumexp(mixing + normal, dim=1).flatten(1).sum(dim=1)


def safe_log(x: torch.Tensor, eps: float = 1e-16) -> torch.Tensor:
    return torch.log(x.clamp_min(eps))


# --- object capsule autoencoder -----------------------------------------------------------------


class PresenceAttention(nn.Module):
    """Multi-head QKV attention over parts, each key weighted by its part's presence.

    ``mask="reference"`` subtracts (1 - presence) * 1e32 from the logits, as the reference does.
    For presences of exactly 0 or 1 that is a mask; for presences strictly between (a float32
    sigmoid reaches 1 only for logits above about 17) the differences of the subtracted terms
    dwarf the logits, so every query attends to the single most present part. ``mask="soft"``
    adds log(presence): the same mask at 0 and 1, and attention weighted by presence in between.
    """

    def __init__(self, dims_q: int, dims_kv: int, heads: int, mask: str):
        super().__init__()
        head_dims = math.ceil(dims_kv / heads)
        self.heads, self.head_dims, self.mask = heads, head_dims, mask
        self.query = nn.Linear(dims_q, heads * head_dims)
        self.key = nn.Linear(dims_kv, heads * head_dims)
        self.value = nn.Linear(dims_kv, heads * head_dims)
        self.output = nn.Linear(heads * head_dims, dims_kv)

    def forward(self, queries: torch.Tensor, keys: torch.Tensor, presence: torch.Tensor) -> torch.Tensor:
        def split(x: torch.Tensor) -> torch.Tensor:
            return x.view(*x.shape[:2], self.heads, self.head_dims).transpose(1, 2)

        q, k, v = split(self.query(queries)), split(self.key(keys)), split(self.value(keys))
        if self.mask == "reference":
            weighting = -(1.0 - presence) * 1e32
        else:
            weighting = safe_log(presence)
        logits = q @ k.transpose(-1, -2) / math.sqrt(self.head_dims) + weighting[:, None, None, :]
        attended = (logits.softmax(dim=-1) @ v).transpose(1, 2).flatten(2)
        return self.output(attended)


class SelfAttentionBlock(nn.Module):
    def __init__(self, dims: int, heads: int, mask: str):
        super().__init__()
        self.attention = PresenceAttention(dims, dims, heads, mask)
        self.norm_attention = nn.LayerNorm(dims)
        self.feed_forward = nn.Sequential(nn.Linear(dims, 2 * dims), nn.ReLU(), nn.Linear(2 * dims, dims))
        self.norm_output = nn.LayerNorm(dims)

    def forward(self, x: torch.Tensor, presence: torch.Tensor) -> torch.Tensor:
        y = (self.attention(x, x, presence) + x) * presence.unsqueeze(-1)
        y = self.norm_attention(y)
        return self.norm_output(self.feed_forward(y) + y)


class SetTransformer(nn.Module):
    """Parts (B, M, D) -> one embedding per object capsule (B, O, E) via learned inducing points."""

    def __init__(self, dims_in: int, config: Config):
        super().__init__()
        dims, out = config.st_dims, config.st_output_dims
        self.embed = nn.Linear(dims_in, dims)
        mask = config.attention_mask
        self.blocks = nn.ModuleList(SelfAttentionBlock(dims, config.st_heads, mask) for _ in range(config.st_layers))
        self.project = nn.Linear(dims, out)
        self.inducing_points = nn.Parameter(nn.init.xavier_uniform_(torch.empty(config.n_obj_caps, out)))
        self.pool = PresenceAttention(out, out, config.st_heads, mask)

    def forward(self, parts: torch.Tensor, presence: torch.Tensor) -> torch.Tensor:
        h = self.embed(parts)
        for block in self.blocks:
            h = block(h, presence)
        h = self.project(h)
        queries = self.inducing_points.expand(h.shape[0], -1, -1)
        return self.pool(queries, h, presence)


class PerCapsuleLinear(nn.Module):
    """A separate linear map for each object capsule: (B, O, I) -> (B, O, J)."""

    def __init__(self, n_caps: int, dims_in: int, dims_out: int, bias: bool = True):
        super().__init__()
        self.weight = nn.Parameter(truncated_normal_(torch.empty(n_caps, dims_in, dims_out), dims_in))
        self.bias = nn.Parameter(torch.zeros(n_caps, dims_out)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.einsum("boi,oij->boj", x, self.weight)
        return y if self.bias is None else y + self.bias


@dataclass
class ObjectCapsules:
    votes: torch.Tensor  # (B, O, M, 2, 3): each object's prediction of each part's pose
    scales: torch.Tensor  # (B, O, M)
    vote_presence: torch.Tensor  # (B, O, M)
    presence: torch.Tensor  # (B, O): the prior object-capsule presences
    dynamic_l2: torch.Tensor  # scalar


class CapsuleLayer(nn.Module):
    """Object capsules: per-capsule MLPs give each object's pose, presence and its votes for the
    part poses (object pose composed with learned object-part relations)."""

    def __init__(self, dims_in: int, config: Config):
        super().__init__()
        n_obj, n_part, params, hidden = config.n_obj_caps, config.n_part_caps, config.n_obj_params, config.caps_hidden
        self.n_obj, self.n_part = n_obj, n_part
        # No activation after the last layer of either MLP, and only the last layer is unbiased
        # (the PyTorch port ends both in a ReLU and drops every bias).
        self.encode = nn.Sequential(
            PerCapsuleLinear(n_obj, dims_in, hidden), nn.ReLU(), PerCapsuleLinear(n_obj, hidden, params)
        )
        self.n_out = 6 * n_part + 6 + 1 + n_part + n_part
        self.decode = nn.Sequential(
            PerCapsuleLinear(n_obj, params + 1, hidden), nn.ReLU(),
            PerCapsuleLinear(n_obj, hidden, self.n_out, bias=False),
        )
        self.output_bias = nn.Parameter(torch.zeros(n_obj, self.n_out - 6 * n_part))
        # TF's Glorot uniform for the reference's (1, O, M, 6) variable: fans M * O and 6 * O.
        limit = math.sqrt(6.0 / (n_obj * (n_part + 6)))
        self.static_relations = nn.Parameter(torch.empty(n_obj, n_part, 6).uniform_(-limit, limit))
        self.noise_scale = config.noise_scale
        self.noise_enabled = config.noise_scale > 0

    def forward(self, embeddings: torch.Tensor) -> ObjectCapsules:
        h = self.encode(embeddings)
        h = torch.cat([h, torch.ones_like(h[..., :1])], dim=-1)
        out = self.decode(h)
        batch = out.shape[0]
        dynamic, rest = out.split([6 * self.n_part, self.n_out - 6 * self.n_part], dim=-1)
        rest = rest + self.output_bias
        object_pose, caps_logit, vote_logit, scale = rest.split([6, 1, self.n_part, self.n_part], dim=-1)
        dynamic = dynamic.view(batch, self.n_obj, self.n_part, 6)
        relations = geometric_transform(dynamic + self.static_relations)  # (B, O, M, 2, 3)
        object_pose = geometric_transform(object_pose).unsqueeze(2)  # (B, O, 1, 2, 3)
        votes = compose(object_pose.expand_as(relations), relations)
        if self.training and self.noise_enabled:
            caps_logit = caps_logit + (torch.rand_like(caps_logit) - 0.5) * self.noise_scale
            vote_logit = vote_logit + (torch.rand_like(vote_logit) - 0.5) * self.noise_scale
        vote_presence = torch.sigmoid(caps_logit) * torch.sigmoid(vote_logit)
        return ObjectCapsules(
            votes=votes,
            scales=F.softplus(scale + 0.5) + 0.01,
            vote_presence=vote_presence,
            presence=vote_presence.amax(dim=-1),
            dynamic_l2=dynamic.square().sum() / (2 * batch),
        )


DUMMY_LOG = -2.0 * math.log(10.0)


def capsule_likelihood(
    part_poses: torch.Tensor, part_presence: torch.Tensor, objects: ObjectCapsules
) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(part poses) per image (B,) under the objects' votes, and the posterior over which
    object explains each part (B, M, O). A dummy component explains parts no object claims;
    the mixing weights are the unnormalised vote presences, as in the reference."""
    target = part_poses.flatten(-2).detach().unsqueeze(1)  # (B, 1, M, 6)
    votes, scales = objects.votes.flatten(-2), objects.scales.unsqueeze(-1)
    log_prob = (-0.5 * ((target - votes) / scales) ** 2 - torch.log(scales) - 0.5 * math.log(2 * math.pi)).sum(-1)
    batch, _, n_part = log_prob.shape
    dummy = log_prob.new_full((batch, 1, n_part), DUMMY_LOG)
    joint = torch.cat([safe_log(objects.vote_presence) + log_prob, dummy + DUMMY_LOG], dim=1)  # (B, O + 1, M)
    per_part = torch.logsumexp(joint, dim=1)
    posterior = joint.softmax(dim=1)[:, :-1].transpose(1, 2)
    return (per_part * part_presence.detach()).sum(dim=1), posterior


# --- the model ----------------------------------------------------------------------------------


@dataclass
class Encoding:
    """One forward pass: what the losses, the heads and the attacks read."""

    prior: torch.Tensor  # (B, O) object-capsule presences
    posterior_sum: torch.Tensor  # (B, O) posterior object probabilities summed over parts
    image_log_likelihood: torch.Tensor  # (B,)
    part_log_likelihood: torch.Tensor  # (B,)
    posterior: torch.Tensor  # (B, M, O)
    dynamic_l2: torch.Tensor

    @property
    def posterior_presence(self) -> torch.Tensor:
        """The posterior presences as a mean over parts, in [0, 1]."""
        return self.posterior_sum / self.posterior.shape[1]

    def presences(self, source: str) -> torch.Tensor:
        return self.prior if source == "prior" else self.posterior_presence


class KMeansHead(nn.Module):
    """Cosine k-means on presences with clusters matched to labels on the training split."""

    def __init__(self, n_clusters: int, dims: int):
        super().__init__()
        self.register_buffer("centroids", torch.zeros(n_clusters, dims))
        self.register_buffer("cluster_labels", torch.zeros(n_clusters, dtype=torch.int64))

    def fit(self, features: torch.Tensor, labels: torch.Tensor, num_classes: int, seed: int) -> None:
        from scipy.optimize import linear_sum_assignment
        from sklearn.cluster import KMeans

        unit = F.normalize(features.double(), dim=1).numpy()
        kmeans = KMeans(n_clusters=len(self.centroids), n_init=10, random_state=seed).fit(unit)
        counts = torch.zeros(len(self.centroids), num_classes, dtype=torch.int64)
        counts.index_put_((torch.from_numpy(kmeans.labels_).long(), labels), torch.ones_like(labels), accumulate=True)
        clusters, classes = linear_sum_assignment(-counts.numpy())
        mapping = counts.argmax(dim=1)  # clusters left unmatched (more clusters than classes) vote by majority
        mapping[torch.from_numpy(clusters).long()] = torch.from_numpy(classes).long()
        self.centroids.copy_(F.normalize(torch.from_numpy(kmeans.cluster_centers_), dim=1).float())
        self.cluster_labels.copy_(mapping)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        similarity = F.normalize(features, dim=1) @ self.centroids.T
        return self.cluster_labels[similarity.argmax(dim=1)]


class SCAE(Model):
    """The stacked capsule autoencoder, trained without labels except for its two linear probes
    (on detached presences, so they do not shape the capsules), evaluated through one of four heads."""

    stochastic = False

    def __init__(
        self,
        input_shape: tuple[int, int, int],
        num_classes: int,
        *,
        preset: str,
        head: str,
        **overrides: float | int | None,
    ):
        super().__init__(input_shape, num_classes)
        self.config = config = resolve_config(preset, overrides)
        self.head = head
        self.capabilities = frozenset({LOSS, PRESENCES, CLASSIFY} | (set() if head_uses_kmeans(head) else {LOGITS}))
        channels = input_shape[0]
        self.part_encoder = PartEncoder(channels, config)
        self.decoder = TemplateDecoder(channels, config)
        part_dims = 6 + 1 + config.n_part_features + channels * config.template_size**2
        self.set_transformer = SetTransformer(part_dims, config)
        self.capsules = CapsuleLayer(config.st_output_dims, config)
        self.probes = nn.ModuleDict({source: nn.Linear(config.n_obj_caps, num_classes) for source in SOURCES})
        self.kmeans = nn.ModuleDict({source: KMeansHead(num_classes, config.n_obj_caps) for source in SOURCES})
        sonnet_init(self)

    # --- the forward pass

    def canvas(self, x: torch.Tensor) -> torch.Tensor:
        """The input on the model's canvas if its size differs: resized (bilinear) or padded with
        zeros around it, as ``canvas_fit`` says; differentiable either way."""
        size = self.config.canvas
        height, width = x.shape[-2:]
        if height == size and width == size:
            return x
        if self.config.canvas_fit == "resize":
            return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        if height > size or width > size:
            raise ValueError(f"canvas_fit 'pad' needs inputs of at most the canvas ({size}), got {height}x{width}")
        top, left = (size - height) // 2, (size - width) // 2
        return F.pad(x, (left, size - width - left, top, size - height - top))

    def encode(self, x: torch.Tensor, target: torch.Tensor | None = None, *, render: bool = True) -> Encoding:
        """One pass; ``render=False`` skips the image likelihood (the costly rendering), which the
        presences do not need."""
        image = self.canvas(x)
        poses, features, part_presence = self.part_encoder(image)
        templates = self.decoder.templates(features)
        # The object encoder sees the parts' poses (the affine matrices' six entries), presences and
        # templates without passing gradients into them, but trains the special features (as in the
        # reference).
        parts = torch.cat(
            [
                poses.detach().flatten(-2), 1.0 - part_presence.detach().unsqueeze(-1), features,
                templates.detach().flatten(2),
            ],
            dim=-1,
        )
        objects = self.capsules(self.set_transformer(parts, part_presence.detach()))
        part_ll, posterior = capsule_likelihood(poses, part_presence, objects)
        image_ll = part_ll.new_zeros(part_ll.shape)
        if render:
            reconstruct = image if target is None else self.canvas(target)
            image_ll = self.decoder.log_likelihood(reconstruct, poses, features, part_presence)
        return Encoding(
            prior=objects.presence,
            posterior_sum=posterior.sum(dim=1),
            image_log_likelihood=image_ll,
            part_log_likelihood=part_ll,
            posterior=posterior,
            dynamic_l2=objects.dynamic_l2,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.capsule_presences(x)

    def set_noise(self, enabled: bool) -> None:
        """Switch the training-time presence noise of both encoders on or off."""
        self.part_encoder.noise_enabled = self.capsules.noise_enabled = enabled

    # --- training

    def training_settings(self) -> TrainingSettings:
        c = self.config
        optimizer, options = c.optimizer, {}
        if c.optimizer == TF1RMSprop.__name__:
            # The reference's eps, 1e-2 / batch^2, is 1e-6 for its batches of 100.
            optimizer, options = f"{TF1RMSprop.__module__}:{TF1RMSprop.__name__}", {"momentum": 0.9, "eps": 1e-6}
        return TrainingSettings(c.epochs, c.batch_size, c.lr, optimizer, options, c.lr_decay, c.lr_decay_steps)

    def loss(self, x: torch.Tensor, y: torch.Tensor, state: TrainingState) -> torch.Tensor:
        """The reference's MNIST objective on the canvas, shifted at random if ``max_shift`` says so
        (the reconstruction target with the input); the encoding goes to ``state.outputs['encoding']``."""
        target = state.batch.target if state.batch is not None else None
        x = self.canvas(x)
        target = None if target is None else self.canvas(target)
        if self.training and self.config.max_shift:
            offsets = torch.randint(-self.config.max_shift, self.config.max_shift + 1, (len(x), 2))
            x = translate(x, offsets)
            target = None if target is None else translate(target, offsets)
        encoding = self.encode(x, target)
        state.outputs["encoding"] = encoding
        return self.objective(encoding, y)

    def objective(self, encoding: Encoding, y: torch.Tensor) -> torch.Tensor:
        c = self.config
        batch, n_obj = encoding.prior.shape
        prior_within = (encoding.prior.sum(dim=1) - n_obj / 10).square().mean()
        prior_between = (encoding.prior.sum(dim=0) - batch / 10).square().mean()
        posterior = encoding.posterior_presence
        posterior_within = entropy(posterior / posterior.sum(dim=1, keepdim=True).clamp_min(1e-8)).mean()
        total = posterior.sum(dim=0)
        posterior_between = entropy(total / total.sum().clamp_min(1e-8))
        probe_loss = sum(
            F.cross_entropy(self.probes[source](self.probe_input(encoding, source).detach()), y) for source in SOURCES
        )
        return (
            -encoding.image_log_likelihood.mean()
            - encoding.part_log_likelihood.mean()
            + c.dynamic_l2 * encoding.dynamic_l2
            + c.posterior_within * posterior_within
            - c.posterior_between * posterior_between
            + c.prior_within * prior_within
            + c.prior_between * prior_between
            + probe_loss
        )

    @staticmethod
    def probe_input(encoding: Encoding, source: str) -> torch.Tensor:
        """The reference's probe inputs: prior presences, or posterior probabilities summed over parts."""
        return encoding.prior if source == "prior" else encoding.posterior_sum

    # --- heads

    @property
    def head_source(self) -> str:
        return head_source(self.head)

    def fit_head(self, data: Dataset, ctx: TrainContext) -> None:
        """Fit the k-means head on the training split (the linear probes trained with the model)."""
        if not head_uses_kmeans(self.head):
            return
        features = []
        self.eval()
        with torch.no_grad():
            for chunk in data.x_train.split(500):
                features.append(self.capsule_presences(chunk.to(ctx.device), self.head_source).cpu())
        self.kmeans[self.head_source].fit(torch.cat(features), data.y_train, self.num_classes, ctx.seed)

    def head_modules(self) -> list[nn.Module]:
        # Both k-means heads, whatever the head: the trained backbone's state (cached once for the
        # four heads) is then the same for all of them.
        return [self.kmeans]

    def capsule_presences(self, x: torch.Tensor, source: str | None = None) -> torch.Tensor:
        return self.encode(x, render=False).presences(source or self.head_source)

    def classify_presences(self, presences: torch.Tensor, head: str | None = None) -> torch.Tensor:
        head = head or self.head
        source = head_source(head)
        if head_uses_kmeans(head):
            return self.kmeans[source](presences)
        return self.probe_logits(presences, source).argmax(dim=1)

    def probe_logits(self, presences: torch.Tensor, source: str) -> torch.Tensor:
        scale = self.config.n_part_caps if source == "posterior" else 1
        return self.probes[source](presences * scale)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The linear probe's logits (linear heads only: a k-means head has no differentiable scores)."""
        if head_uses_kmeans(self.head):
            raise RuntimeError(f"the {self.head} head has no logits")
        return self.probe_logits(self.capsule_presences(x), self.head_source)

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify_presences(self.capsule_presences(x))


def translate(images: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Each image (B, C, H, W) moved by its (down, right) offset in whole pixels, zeros shifted in."""
    reach = int(offsets.abs().max()) if len(offsets) else 0
    height, width = images.shape[-2:]
    padded = F.pad(images, (reach, reach, reach, reach))
    return torch.stack(
        [padded[i, :, reach - down: reach - down + height, reach - right: reach - right + width]
         for i, (down, right) in enumerate(offsets.tolist())]
    )


def entropy(p: torch.Tensor) -> torch.Tensor:
    return -(p * safe_log(p)).sum(dim=-1)
