"""The image autoencoder: diffusers ``AutoencoderKL``, tiny for the embedded default, SD's by config.

Latents are multiplied by ``scaling_factor`` before diffusion so they have unit variance, the role
SD's 0.18215 plays; for a freshly trained VAE it is measured as 1 / std of posterior samples.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from diffusers import AutoencoderKL

from pixart_lab.data.transforms import model_range_to_uint8, uint8_to_model_range
from pixart_lab.utils.hub import download_hint, load_pretrained


def build_vae(
    block_out_channels: Sequence[int] = (32, 64, 64),
    layers_per_block: int = 1,
    latent_channels: int = 4,
    norm_num_groups: int = 16,
    sample_size: int = 64,
) -> AutoencoderKL:
    """A small ``AutoencoderKL``; it downsamples by 2 ** (len(block_out_channels) - 1)."""
    n = len(block_out_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(block_out_channels),
        layers_per_block=layers_per_block,
        latent_channels=latent_channels,
        norm_num_groups=norm_num_groups,
        sample_size=sample_size,
    )


SD_VAE = "stabilityai/sd-vae-ft-ema"  # PixArt-alpha's VAE (Stable Diffusion's, EMA fine-tuned)


def load_vae(name_or_path: str, subfolder: str | None = None, scaling_factor: float | None = None) -> AutoencoderKL:
    """Load a pretrained VAE: a local ``save_pretrained`` folder or a hub name (``stabilityai/sd-vae-ft-ema``).

    ``scaling_factor`` overrides the folder's (SD's VAE: 0.18215). Offline (``HF_HUB_OFFLINE=1``) a hub
    name is read from the local cache only; anything missing raises ``MissingWeightsError``.
    """
    component = f"VAE (subfolder {subfolder})" if subfolder else "VAE"
    vae = load_pretrained(
        component, name_or_path, download_hint(name_or_path, "vae.pretrained", SD_VAE),
        lambda local_only: AutoencoderKL.from_pretrained(name_or_path, subfolder=subfolder, local_files_only=local_only),
    )  # fmt: skip
    if scaling_factor is not None:
        vae.register_to_config(scaling_factor=float(scaling_factor))
    return vae


def vae_loss(vae: AutoencoderKL, images: torch.Tensor, kl_weight: float, l1_weight: float = 0.0) -> dict[str, torch.Tensor]:
    """Reconstruction MSE (images in [-1, 1]) plus ``l1_weight`` x L1 plus ``kl_weight`` x the per-pixel KL to N(0, I).

    L1 keeps the gradient of small errors that MSE squares away: the edges of small shapes, a few
    pixels of a background-dominated image, are what tells a star from a circle.
    """
    posterior = vae.encode(images).latent_dist
    reconstruction = vae.decode(posterior.sample()).sample
    error = reconstruction.float() - images.float()
    mse, l1 = error.pow(2).mean(), error.abs().mean()
    kl = posterior.kl().mean() / images[0].numel()
    loss = mse + l1_weight * l1 + kl_weight * kl
    return {"loss": loss, "mse": mse.detach(), "l1": l1.detach(), "kl": kl.detach()}


@torch.no_grad()
def reconstruct(vae: AutoencoderKL, images: torch.Tensor) -> torch.Tensor:
    """Decode the posterior mean: the deterministic reconstruction used for PSNR."""
    return vae.decode(vae.encode(images).latent_dist.mean).sample.clamp(-1, 1)


def round_trip_uint8(vae: AutoencoderKL, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """uint8 images [N, 3, H, W] encoded and decoded: the best a latent diffusion model on this VAE can draw of them."""
    decoded = [reconstruct(vae, uint8_to_model_range(images[i : i + batch_size])) for i in range(0, len(images), batch_size)]
    return model_range_to_uint8(torch.cat(decoded))


def psnr(reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB for images in [-1, 1] (peak-to-peak 2, i.e. the usual [0, 1] PSNR)."""
    mse = ((reconstruction.float() - target.float()) / 2).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(1.0 / mse.clamp_min(1e-12))


@torch.no_grad()
def centre_latents(vae: AutoencoderKL, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Fold the latents' per-channel mean into the VAE so that its posterior means average zero.

    ``quant_conv`` (encoder side) subtracts the mean ``m`` and ``post_quant_conv`` (decoder side)
    adds ``W m`` to its bias, so ``decode(encode(x))`` is unchanged. Why: diffusion samplers start
    from zero-mean noise and, at high noise, can only guess a latent's mean (x0 = (x_t - sigma eps)
    / alpha is amplified 160x at t=999); latents offset by ~1.4 std (measured on the embedded VAE)
    made samples pick wrong, mostly dark, backgrounds. Pipelines divide by ``scaling_factor`` only,
    so the shift must live in the weights, not in a ``shift_factor``. Returns ``m``.
    """
    if vae.quant_conv is None or vae.post_quant_conv is None:
        raise ValueError("centre_latents needs a VAE with quant_conv and post_quant_conv (use_quant_conv=True)")
    means = [vae.encode(images[i : i + batch_size]).latent_dist.mean for i in range(0, len(images), batch_size)]
    m = torch.cat(means).float().mean(dim=(0, 2, 3))
    channels = m.numel()
    vae.quant_conv.bias[:channels] -= m.to(vae.quant_conv.bias.dtype)
    weight = vae.post_quant_conv.weight[:, :, 0, 0].float()
    vae.post_quant_conv.bias += (weight @ m).to(vae.post_quant_conv.bias.dtype)
    return m


@torch.no_grad()
def measure_scaling_factor(vae: AutoencoderKL, images: torch.Tensor, batch_size: int = 64) -> float:
    """1 / std of posterior samples over ``images``: makes the diffusion latents unit-variance."""
    samples = [vae.encode(images[i : i + batch_size]).latent_dist.sample() for i in range(0, len(images), batch_size)]
    return float(1.0 / torch.cat(samples).float().std())
