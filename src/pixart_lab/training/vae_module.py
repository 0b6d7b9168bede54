"""Lightning module that trains the embedded ``AutoencoderKL`` on corpus images."""

from __future__ import annotations

import lightning as L
import torch
from diffusers import AutoencoderKL

from pixart_lab.data.transforms import uint8_to_model_range
from pixart_lab.models.vae import psnr, reconstruct, vae_loss
from pixart_lab.training.lr_schedule import adamw_warmup_cosine


class VAEModule(L.LightningModule):
    """MSE (+ L1) + small KL on random crops (the VAE is convolutional, so crops train it as well as whole images)."""

    def __init__(
        self,
        vae: AutoencoderKL,
        lr: float,
        kl_weight: float,
        crop_size: int | None,
        warmup_steps: int = 0,
        total_steps: int | None = None,
        l1_weight: float = 0.0,
    ):
        super().__init__()
        self.vae = vae
        self.lr, self.kl_weight, self.l1_weight, self.crop_size = lr, kl_weight, l1_weight, crop_size
        self.warmup_steps, self.total_steps = warmup_steps, total_steps

    def _random_crop(self, images: torch.Tensor) -> torch.Tensor:
        size = self.crop_size
        if not size or size >= images.shape[-1]:
            return images
        # Crops aligned to the VAE's downsampling factor keep the latent grid aligned with pixels.
        factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        top, left = (torch.randint(0, (images.shape[-1] - size) // factor + 1, (2,)) * factor).tolist()
        return images[..., top : top + size, left : left + size]

    def training_step(self, batch: tuple[torch.Tensor], batch_idx: int) -> torch.Tensor:
        images = self._random_crop(uint8_to_model_range(batch[0]))
        losses = vae_loss(self.vae, images, self.kl_weight, self.l1_weight)
        self.log_dict({f"train/{k}": v for k, v in losses.items()}, prog_bar=True, batch_size=len(images))
        return losses["loss"]

    def validation_step(self, batch: tuple[torch.Tensor], batch_idx: int) -> None:
        images = uint8_to_model_range(batch[0])
        self.log("val/psnr", psnr(reconstruct(self.vae, images), images).mean(), prog_bar=True, batch_size=len(images))

    def configure_optimizers(self):
        return adamw_warmup_cosine(self.vae.parameters(), self.lr, 0.0, self.warmup_steps, self.total_steps)
