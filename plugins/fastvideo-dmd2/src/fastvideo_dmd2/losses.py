"""The DMD2 arithmetic on tensors, apart from models and the trainer (so that tests can check it).

Flow-matching notation, as the core's objective (``fastvideo.training.objectives``): at noise level
``sigma`` in (0, 1] the noisy latents are ``x_t = (1 - sigma) x0 + sigma e`` and the DiT predicts
the velocity ``v = e - x0``, seeing the timestep ``1000 sigma``; its clean estimate is
``x0 = x_t - sigma v``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def expand(sigma: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``sigma`` ``(B,)`` viewed as ``(B, 1, ..., 1)`` to broadcast against ``like``."""
    return sigma.view(-1, *([1] * (like.ndim - 1))).to(like.device, like.dtype)


def clean_estimate(noisy: torch.Tensor, velocity: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """``x0 = x_t - sigma v`` (fp32)."""
    return noisy.float() - expand(sigma, noisy).float() * velocity.float()


def renoise(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """``x_t = (1 - sigma) x0 + sigma e``."""
    s = expand(sigma, x0)
    return (1 - s) * x0 + s * noise


def dmd_gradient(generated: torch.Tensor, real_x0: torch.Tensor, fake_x0: torch.Tensor) -> torch.Tensor:
    """The distribution-matching gradient of DMD2 (arXiv 2405.14867, eq. 2 with its normaliser).

    With ``p_real = x - real_x0`` and ``p_fake = x - fake_x0`` (the teacher's and the critic's
    denoising residuals at the noised student sample), the gradient is ``(p_real - p_fake)`` divided,
    per sample, by the mean absolute ``p_real``; non-finite entries are zeroed.
    """
    import torch

    x = generated.detach().float()
    p_real = x - real_x0.float()
    p_fake = x - fake_x0.float()
    normaliser = p_real.abs().flatten(1).mean(1)
    grad = (p_real - p_fake) / expand(normaliser, x)
    return torch.nan_to_num(grad)


def dmd_loss(generated: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """``0.5 * mean((x - stopgrad(x - grad))^2)``: its gradient in ``x`` is ``grad / numel``."""
    x = generated.float()
    target = (x - grad.float()).detach()
    return 0.5 * (x - target).pow(2).mean()


def flow_matching_loss(velocity: torch.Tensor, noise: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """The critic's loss: ``mean((v - (e - x0))^2)`` on the student's samples ``x0``."""
    return (velocity.float() - (noise.float() - x0.float())).pow(2).mean()
