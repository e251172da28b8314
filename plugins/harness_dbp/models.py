"""VAE and DRAW autoencoders trained with double backpropagation (DBP), with a GMM classifier on
their latent space ("Double Backpropagation for Training Autoencoders against Adversarial
Attack", Formulas 10-15).

The DBP objective is the autoencoder's own training objective (Formulas 11 and 12): the
reconstruction loss, ``kl_weight`` (lambda1) times the KL term, and ``dbp`` (lambda2) times the
squared L2 norm of the reconstruction loss's input gradient through the network, the target held
fixed (see :meth:`Autoencoder.reconstruction_gradient`), taken with
``torch.autograd.grad(create_graph=True)``. With the paper's schedule lambda2 is 0 for the first
half of the epochs; ``dbp = 0`` is the plain autoencoder.
"""

from __future__ import annotations

import math
from abc import abstractmethod

import torch
from torch import nn
from torch.nn import functional as F

from harness.contracts import LOGITS, LOSS, Dataset, Model, TrainContext, TrainingSettings, TrainingState
from harness_dbp.gmm import ClassGMM
from harness_dbp.grid import DRAW_PRESETS

ENCODE = "encode"
"""``model.encode(x)``: the encoder's Gaussian (mean, log-variance), each (B, D), deterministic."""
RECONSTRUCT = "reconstruct"
"""``model.reconstruct(x, sample)``: decoder means (B, C, H, W); ``sample`` draws the latent."""
SCHEDULES = ("half", "constant")


class Autoencoder(Model):
    """What VAE and DRAW share: the DBP objective, the GMM head and the capabilities attacks use.

    Classification encodes with the encoder's means (no sampling), so ``predict`` is
    deterministic; reconstructions sample the latent unless asked not to.
    """

    capabilities = frozenset({LOGITS, LOSS, ENCODE, RECONSTRUCT})

    def __init__(
        self,
        input_shape: tuple[int, int, int],
        num_classes: int,
        *,
        latent_dims: int,
        dbp: float,
        dbp_schedule: str,
        kl_weight: float,
        gmm_components: int,
        gmm_covariance: str,
        epochs: int,
        batch_size: int,
        lr: float,
    ):
        super().__init__(input_shape, num_classes)
        if dbp < 0 or kl_weight < 0:
            raise ValueError("dbp and kl_weight must be at least 0")
        if dbp_schedule not in SCHEDULES:
            raise ValueError(f"unknown dbp_schedule '{dbp_schedule}' (known: {', '.join(SCHEDULES)})")
        self.dbp, self.dbp_schedule, self.kl_weight = dbp, dbp_schedule, kl_weight
        self.epochs, self.batch_size, self.lr = epochs, batch_size, lr
        self.pixels = math.prod(input_shape)
        self.gmm = ClassGMM(num_classes, gmm_components, latent_dims, gmm_covariance)

    # --- what each architecture defines

    @abstractmethod
    def run(self, x: torch.Tensor, sample: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encode and decode: the latent Gaussian's (mean, log-variance), each (B, D), and the
        reconstruction's Bernoulli logits (B, C*H*W); ``sample`` draws the latent, else uses the means."""

    # --- training

    def training_settings(self) -> TrainingSettings:
        # The reference trains with Adam and clips the gradients by their global norm, then each to [-1, 1].
        return TrainingSettings(self.epochs, self.batch_size, self.lr, "Adam", clip_grad_norm=3.0, clip_grad_value=1.0)

    def dbp_weight(self, state: TrainingState) -> float:
        """lambda2 at the current epoch: 0 in the first half under the paper's schedule."""
        if self.dbp_schedule == "half" and state.epoch < state.settings.epochs / 2:
            return 0.0
        return self.dbp

    def loss(self, x: torch.Tensor, y: torch.Tensor, state: TrainingState) -> torch.Tensor:
        weight = self.dbp_weight(state)
        mean, log_var, reconstruction, gradient = self.reconstruction_gradient(
            x, sample=True, create_graph=weight > 0, differentiate=weight > 0
        )
        loss = reconstruction.mean() + self.kl_weight * kl_to_standard_normal(mean, log_var).mean()
        if weight > 0:
            loss = loss + weight * gradient.square().sum(dim=1).mean()
        return loss

    def reconstruction_gradient(
        self, x: torch.Tensor, *, sample: bool, create_graph: bool, differentiate: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The latent Gaussian, the per-image reconstruction loss L_rec(d(e(x)), x_bar) and its
        input gradient (B, C*H*W) through the network only, the target x_bar = x held fixed: the
        quantity DBP penalises and ``reconstruction-gradient`` reports (None unless ``differentiate``).

        Formula 10 writes grad_x L_rec(d(e(x)), x). Read literally, with x also the Bernoulli
        target, that gradient is J^T (sigmoid(l) - x) - l (l the decoder's logits, J = dl/dx): mostly
        the size of the logits, minimised by l = 0, a grey image whatever the input. Double
        backpropagation (Drucker and LeCun) differentiates the loss with respect to the network's
        input with the target fixed, and the paper's aim is a small dx'/dx (Section 3: "an
        autoencoder with small dx'/dx", "restrict the gradient from the reconstruction image to the
        original one"), so the target is held fixed: the penalty is ||J^T (sigmoid(l) - x_bar)||^2,
        the reconstruction's sensitivity to its input weighted by its error.
        """
        target = x.detach()
        x = target.clone().requires_grad_(differentiate)
        mean, log_var, logits = self.run(x, sample=sample)
        reconstruction = self.reconstruction_loss(logits, target)
        gradient = input_gradient(reconstruction, x, create_graph=create_graph) if differentiate else None
        return mean, log_var, reconstruction, gradient

    def reconstruction_loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per image: the Bernoulli negative log-likelihood summed over pixels (B,)."""
        return F.binary_cross_entropy_with_logits(logits, target.flatten(1), reduction="none").sum(dim=1)

    # --- the capabilities

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_var, _ = self.run(x, sample=False)
        return mean, log_var

    def reconstruct(self, x: torch.Tensor, sample: bool = True) -> torch.Tensor:
        _, _, logits = self.run(x, sample=sample)
        return torch.sigmoid(logits).view(-1, *self.input_shape)

    # --- the GMM head

    def fit_head(self, data: Dataset, ctx: TrainContext) -> None:
        """One Gaussian mixture per class, fitted by EM on the encoder means of the training split."""
        self.eval()
        with torch.no_grad():
            means = torch.cat([self.encode(chunk.to(ctx.device))[0].cpu() for chunk in data.x_train.split(500)])
        self.gmm.fit(means, data.y_train, ctx.seed)
        self.gmm.to(ctx.device)

    def head_modules(self) -> list[nn.Module]:
        return [self.gmm]

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Log class densities of the encoder mean: their softmax is Formula 14's normalised output."""
        return self.gmm.log_densities(self.encode(x)[0])

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(x).argmax(dim=1)


def kl_to_standard_normal(mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(log_var)) || N(0, I)) per image (B,)."""
    return 0.5 * (mean.square() + log_var.exp() - log_var - 1.0).sum(dim=1)


def input_gradient(per_image: torch.Tensor, x: torch.Tensor, create_graph: bool) -> torch.Tensor:
    """d(sum of per-image losses)/dx, flattened per image (B, C*H*W): each image's own gradient."""
    (gradient,) = torch.autograd.grad(per_image.sum(), x, create_graph=create_graph)
    return gradient.flatten(1)


class VAE(Autoencoder):
    """MLP encoder and decoder with softplus hidden layers (the reference's 512-512, latent 32),
    a reparameterised Gaussian latent and a Bernoulli likelihood."""

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int, *, hidden: list[int], latent: int, **rest):
        super().__init__(input_shape, num_classes, latent_dims=latent, **rest)
        widths = [self.pixels, *hidden]
        encoder: list[nn.Module] = [nn.Flatten()]
        for width_in, width_out in zip(widths, widths[1:]):
            encoder += [nn.Linear(width_in, width_out), nn.Softplus()]
        self.encoder = nn.Sequential(*encoder)
        self.to_latent = nn.Linear(widths[-1], 2 * latent)
        decoder: list[nn.Module] = []
        for width_in, width_out in zip([latent, *hidden[::-1]], hidden[::-1]):
            decoder += [nn.Linear(width_in, width_out), nn.Softplus()]
        decoder.append(nn.Linear(hidden[0] if hidden else latent, self.pixels))
        self.decoder = nn.Sequential(*decoder)

    def run(self, x: torch.Tensor, sample: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mean, log_var = self.to_latent(self.encoder(x)).chunk(2, dim=1)
        z = mean + torch.randn_like(mean) * (0.5 * log_var).exp() if sample else mean
        return mean, log_var, self.decoder(z)


class DRAW(Autoencoder):
    """DRAW (Gregor et al., 2015): T steps of an LSTM encoder reading the image and the error of
    the canvas so far, a Gaussian latent per step, and an LSTM decoder adding to the canvas;
    with ``attention``, reads and writes go through N x N Gaussian filterbanks. The latent is the
    concatenation of the T steps' latents."""

    def __init__(
        self,
        input_shape: tuple[int, int, int],
        num_classes: int,
        *,
        preset: str,
        steps: int | None,
        hidden: int | None,
        latent: int | None,
        attention: str,
        window: int | None,
        **rest,
    ):
        if preset not in DRAW_PRESETS:
            raise ValueError(f"unknown DRAW preset '{preset}' (known: {', '.join(DRAW_PRESETS)})")
        config = dict(DRAW_PRESETS[preset])
        given = {"steps": steps, "hidden": hidden, "latent": latent, "window": window}
        config.update({key: int(value) for key, value in given.items() if value is not None})
        if attention:
            config["attention"] = attention == "on"
        steps, hidden, latent, window = config["steps"], config["hidden"], config["latent"], config["window"]
        super().__init__(input_shape, num_classes, latent_dims=steps * latent, **rest)
        channels, self.height, self.width = input_shape
        if channels != 1:
            raise ValueError("DRAW is implemented for single-channel images")
        self.steps, self.hidden, self.attention, self.window = steps, hidden, bool(config["attention"]), window
        read_size = 2 * window * window if self.attention else 2 * self.pixels
        self.encoder = nn.LSTMCell(read_size + hidden, hidden)
        self.to_latent = nn.Linear(hidden, 2 * latent)
        self.decoder = nn.LSTMCell(latent, hidden)
        self.write_patch = nn.Linear(hidden, window * window if self.attention else self.pixels)
        if self.attention:
            # centre (2), log variance, log stride and log intensity of the filterbanks
            self.read_parameters = nn.Linear(hidden, 5)
            self.write_parameters = nn.Linear(hidden, 5)

    def filterbanks(self, h: torch.Tensor, layer: nn.Linear) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Horizontal (B, N, W) and vertical (B, N, H) filterbanks and the intensity (B, 1, 1)."""
        g_x, g_y, log_var, log_stride, log_gamma = layer(h).unbind(dim=1)
        centre_x = (self.width + 1) / 2 * (g_x + 1)
        centre_y = (self.height + 1) / 2 * (g_y + 1)
        stride = (max(self.width, self.height) - 1) / (self.window - 1) * log_stride.exp()
        offsets = torch.arange(self.window, device=h.device, dtype=h.dtype) - self.window / 2 - 0.5
        mu_x = centre_x[:, None] + offsets * stride[:, None]
        mu_y = centre_y[:, None] + offsets * stride[:, None]
        variance = log_var.exp()[:, None, None]
        cols = torch.arange(self.width, device=h.device, dtype=h.dtype)
        rows = torch.arange(self.height, device=h.device, dtype=h.dtype)
        f_x = torch.exp(-(cols[None, None, :] - mu_x[:, :, None]).square() / (2 * variance))
        f_y = torch.exp(-(rows[None, None, :] - mu_y[:, :, None]).square() / (2 * variance))
        f_x = f_x / f_x.sum(dim=2, keepdim=True).clamp_min(1e-8)
        f_y = f_y / f_y.sum(dim=2, keepdim=True).clamp_min(1e-8)
        return f_x, f_y, log_gamma.exp()[:, None, None]

    def read(self, image: torch.Tensor, error: torch.Tensor, h_dec: torch.Tensor) -> torch.Tensor:
        if not self.attention:
            return torch.cat([image, error], dim=1)
        f_x, f_y, gamma = self.filterbanks(h_dec, self.read_parameters)
        shape = (-1, self.height, self.width)

        def glimpse(x: torch.Tensor) -> torch.Tensor:
            return (gamma * (f_y @ x.view(shape) @ f_x.transpose(1, 2))).flatten(1)

        return torch.cat([glimpse(image), glimpse(error)], dim=1)

    def write(self, h_dec: torch.Tensor) -> torch.Tensor:
        patch = self.write_patch(h_dec)
        if not self.attention:
            return patch
        f_x, f_y, gamma = self.filterbanks(h_dec, self.write_parameters)
        patch = patch.view(-1, self.window, self.window)
        return (f_y.transpose(1, 2) @ patch @ f_x / gamma).flatten(1)

    def run(self, x: torch.Tensor, sample: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        batch = x.shape[0]
        image = x.flatten(1)
        canvas = image.new_zeros(batch, self.pixels)
        h_enc = c_enc = h_dec = c_dec = image.new_zeros(batch, self.hidden)
        means, log_vars = [], []
        for _ in range(self.steps):
            error = image - torch.sigmoid(canvas)
            h_enc, c_enc = self.encoder(torch.cat([self.read(image, error, h_dec), h_dec], dim=1), (h_enc, c_enc))
            mean, log_var = self.to_latent(h_enc).chunk(2, dim=1)
            z = mean + torch.randn_like(mean) * (0.5 * log_var).exp() if sample else mean
            h_dec, c_dec = self.decoder(z, (h_dec, c_dec))
            canvas = canvas + self.write(h_dec)
            means.append(mean)
            log_vars.append(log_var)
        return torch.cat(means, dim=1), torch.cat(log_vars, dim=1), canvas
