"""The ``vae`` training algorithm: train a checkpoint's diffusers autoencoder on pixel clips.

``fv train`` with ``algorithm: vae`` trains the ``vae`` component of ``model.path`` (any diffusers
autoencoder whose ``encode(x).latent_dist`` is a diagonal Gaussian and whose ``decode(z).sample``
returns pixels: ``AutoencoderKLWan``, ``AutoencoderKLHunyuanVideo``, ...) on the videos of a caption
manifest (``data.path``: a folder with ``captions.json``, as ``fv preprocess`` reads). The loss per
clip is

    L1(x, x') + mse_weight * MSE(x, x') + kl_weight * mean KL(q(z|x) || N(0, 1))

with ``z`` drawn from the posterior by the sample's seeded generator. The export writes the trained
autoencoder with diffusers' ``save_pretrained`` as the ``vae`` of a copy of the checkpoint
(``<output_dir>/export``, other components hard-linked) and records the
per-channel mean and standard deviation of its latents (posterior mode, over ``stats_samples``
clips) as ``latents_mean`` / ``latents_std`` in its config, which is how Wan pipelines normalize
latents for the DiT.

Options (``algorithm_options`` in the YAML): ``num_frames``, ``height``, ``width`` (required: the clip
geometry), ``kl_weight`` (1e-6), ``mse_weight`` (1.0), ``stats_samples`` (256),
``sample_posterior`` (true; false decodes the posterior mean: a KL-regularized autoencoder, which
learns much faster when the budget is small, since the decoder does not have to see through the
initial unit-variance posterior noise), ``foreground_weight`` (0; see :func:`foreground_weights`,
for small objects on plain backgrounds: the loss terms are then weighted means),
``first_frame_weight`` (1.0; the loss weight of frame 0 relative to the others: causal video VAEs
such as Wan's encode and decode the first frame alone, and it is the frame they learn last).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from fastvideo.interfaces.training import ModelRole, TrainingAlgorithm
from fastvideo.training.config import _positive, parse_algorithm_options

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True, kw_only=True)
class VAEOptions:
    num_frames: int = 0  # the clip geometry (required)
    height: int = 0
    width: int = 0
    kl_weight: float = 1e-6
    mse_weight: float = 1.0
    stats_samples: int = 256
    sample_posterior: bool = True  # decode z ~ q(z|x); False decodes the posterior mean
    foreground_weight: float = 0.0  # extra loss weight of pixels that differ from the frame's border
    first_frame_weight: float = 1.0  # loss weight of frame 0 (the others weigh 1)

    def __post_init__(self) -> None:
        missing = [k for k in ("num_frames", "height", "width") if getattr(self, k) == 0]
        if missing:
            raise ValueError(
                f"the vae algorithm needs algorithm_options {', '.join(missing)} (the clip geometry), "
                f"e.g. algorithm_options: {{num_frames: 17, height: 64, width: 64}}"
            )
        for key in ("num_frames", "height", "width", "stats_samples"):
            _positive(f"algorithm_options.{key}", getattr(self, key))
        for key in ("kl_weight", "mse_weight", "foreground_weight", "first_frame_weight"):
            _positive(f"algorithm_options.{key}", getattr(self, key), allow_zero=True)


def kl_to_standard_normal(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Mean over elements of KL(N(mean, exp(logvar)) || N(0, 1))."""
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).mean()


def foreground_weights(x: torch.Tensor, extra: float, threshold: float = 0.15) -> torch.Tensor:
    """``1 + extra`` where a pixel differs from its frame's background by more than ``threshold`` in
    some channel, else 1; ``(B, 1, T, H, W)`` for clips ``(B, C, T, H, W)`` in [-1, 1].

    The background of a frame is the per-channel median of its border pixels. Small objects on a
    plain background cover a few percent of the pixels, and an autoencoder first learns the
    background and can then sit for a long time in the minimum that ignores the objects; weighting
    their pixels moves it out of there in a few hundred steps.
    """
    import torch

    border = torch.cat([x[..., 0, :], x[..., -1, :], x[..., 1:-1, 0], x[..., 1:-1, -1]], dim=-1)
    background = border.median(dim=-1).values[..., None, None]  # (B, C, T, 1, 1)
    foreground = (x - background).abs().amax(dim=1, keepdim=True) > threshold
    return 1.0 + extra * foreground.to(x.dtype)


def _weighted_mean(values: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    return values.mean() if weight is None else (values * weight).mean()


class VAEAlgorithm(TrainingAlgorithm):
    """Reconstruction training of the checkpoint's ``vae`` component (one process)."""

    name = "vae"
    roles: ClassVar[tuple[ModelRole, ...]] = (ModelRole(name="vae"),)
    eval_role = "vae"
    description = "the checkpoint's VAE on pixel clips: L1 + MSE reconstruction + KL (one process)"

    def __init__(self, ctx: Any = None) -> None:
        super().__init__(ctx)
        self.options = (
            parse_algorithm_options(VAEOptions, ctx.config.algorithm_options) if ctx is not None else None
        )

    def make_dataset(self) -> Any:
        from fastvideo.training.data import VideoClipDataset

        o = self.options
        assert o is not None
        return VideoClipDataset(
            self.ctx.config.data.path, num_frames=o.num_frames, height=o.height, width=o.width
        )

    def setup(self) -> None:
        from fastvideo.loader.components import load_component

        ctx = self.ctx
        if ctx.world_size > 1:
            raise ValueError(
                f"the vae algorithm trains on one process, got {ctx.world_size}; run `fv train` without torchrun"
            )
        if "vae" not in ctx.source.model_index:
            raise ValueError(f"{ctx.source.path} has no vae component to train")
        vae = load_component(ctx.source.path, ctx.source.model_index, "vae", dtype="fp32", device=ctx.device)
        vae.train().requires_grad_(True)
        self.model = vae
        self.optimizer = ctx.make_optimizer(vae, role="vae")
        ctx.register("vae", vae, self.optimizer)

    def loss(self, micro: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        import torch

        ctx, o = self.ctx, self.options
        assert o is not None
        x = micro["video"].to(ctx.device)
        with ctx.autocast():
            posterior = self.model.encode(x).latent_dist
            mean, logvar = posterior.mean.float(), posterior.logvar.float()
            z = mean
            if o.sample_posterior:
                gens = ctx.generators(micro)
                eps = torch.stack([torch.randn(mean.shape[1:], generator=g) for g in gens]).to(mean.device)
                z = mean + (0.5 * logvar).exp() * eps
            recon = self.model.decode(z).sample.float()
        weight = foreground_weights(x, o.foreground_weight) if o.foreground_weight > 0 else None
        if o.first_frame_weight != 1.0:
            weight = torch.ones_like(x[:, :1]) if weight is None else weight.clone()
            weight[:, :, 0] *= o.first_frame_weight
        l1 = _weighted_mean((recon - x).abs(), weight)
        mse = _weighted_mean((recon - x).pow(2), weight)
        kl = kl_to_standard_normal(mean, logvar)
        loss = l1 + o.mse_weight * mse + o.kl_weight * kl
        plain_mse = mse if weight is None else (recon - x).pow(2).mean()
        return loss, {
            "l1": l1.detach(),
            "mse": mse.detach(),
            "kl": kl.detach(),
            "plain_mse": plain_mse.detach(),
        }

    def train_step(self, batch: Any) -> dict[str, float]:
        import torch

        ctx = self.ctx
        losses, parts = [], []
        for micro in batch:
            loss, extra = self.loss(micro)
            ctx.backward(loss / len(batch))
            losses.append(loss.detach())
            parts.append(torch.stack([extra["l1"], extra["mse"], extra["kl"], extra["plain_mse"]]))
        metrics = ctx.optimizer_step(self.optimizer, self.model)
        l1, mse, kl, plain_mse = torch.stack(parts).mean(0).tolist()
        metrics.update(loss=float(torch.stack(losses).mean()), l1=l1, mse=mse, kl=kl)
        # PSNR of the unweighted mean squared error over [-1, 1] pixels (peak-to-peak 2)
        metrics["psnr"] = float(10 * torch.log10(torch.tensor(4.0 / max(plain_mse, 1e-12))))
        return metrics

    def latent_stats(self, model: Any) -> tuple[list[float], list[float]]:
        """Per-channel mean and std of the posterior mode over the first ``stats_samples`` clips."""
        import torch

        o = self.options
        assert o is not None
        dataset = self.ctx.dataset
        count = min(len(dataset), o.stats_samples)
        total = total_sq = None
        n = 0
        was_training = model.training
        model.eval()
        with torch.inference_mode():
            for i in range(count):
                x = dataset[i]["video"].unsqueeze(0).to(self.ctx.device)
                z = model.encode(x).latent_dist.mode().double()  # (1, C, T, H, W)
                per_channel = z.transpose(0, 1).flatten(1)  # (C, N)
                s, sq = per_channel.sum(1), per_channel.pow(2).sum(1)
                total = s if total is None else total + s
                total_sq = sq if total_sq is None else total_sq + sq
                n += per_channel.shape[1]
        model.train(was_training)
        assert total is not None and total_sq is not None
        mean = total / n
        std = (total_sq / n - mean.pow(2)).clamp_min(1e-12).sqrt()
        return mean.tolist(), std.tolist()

    def export(self, folder: Path) -> Path:
        """``folder``: the base checkpoint with the trained ``vae`` (``export.dtype``, latent stats
        in its config), other components hard-linked, so ``fv preprocess`` and ``fv generate`` load it."""
        import copy

        from fastvideo.loader.components import torch_dtype
        from fastvideo.training.export import write_with_component

        model: Any = self.eval_model()
        mean, std = self.latent_stats(model)
        out = copy.deepcopy(model).to("cpu", torch_dtype(self.ctx.config.export.dtype))
        if "latents_mean" in out.config:
            out.register_to_config(latents_mean=mean, latents_std=std)
        write_with_component(
            self.ctx.source.path,
            Path(folder),
            "vae",
            lambda path: out.save_pretrained(str(path), safe_serialization=True),
            source=self.ctx.source,
        )
        return Path(folder)
