"""Stage `reparam`: convert the stage-1 DiT into the PixArt that stage 2 starts from, and check it."""

from __future__ import annotations

import torch
from diffusers import DiTTransformer2DModel
from omegaconf import DictConfig, OmegaConf

from pixart_lab.cli.entry import entry_point
from pixart_lab.models.denoisers import count_parameters, tie_conditioning_embedders
from pixart_lab.models.reparam import (
    PIXART_XL_2,
    adaln_saving_for_config,
    dit_modulations,
    pixart_modulations,
    reparameterise,
)
from pixart_lab.training.checkpoints import TRANSFORMER_DIR, export_network
from pixart_lab.utils.io import write_json


@torch.no_grad()
def max_output_error(dit, pixart, timestep: int, batch: int, seed: int) -> float:
    """max |PixArt(x, t*, any caption) - DiT(x, t*, null class)| on random latents."""
    generator = torch.Generator().manual_seed(seed)
    config = dit.config
    x = torch.randn(batch, config.in_channels, config.sample_size, config.sample_size, generator=generator)
    t = torch.full((batch,), timestep)
    caption = torch.randn(batch, 12, pixart.config.caption_channels, generator=generator)
    expected = dit(x, timestep=t, class_labels=torch.full((batch,), config.num_embeds_ada_norm)).sample
    converted = pixart(x, encoder_hidden_states=caption, timestep=t, added_cond_kwargs={"resolution": None, "aspect_ratio": None}).sample
    return float((converted - expected).abs().max())


@entry_point("reparam")
def main(cfg: DictConfig) -> dict:
    source = f"{cfg.paths.checkpoints_dir}/{cfg.source}/{TRANSFORMER_DIR}"
    dit = tie_conditioning_embedders(DiTTransformer2DModel.from_pretrained(source)).eval()
    pixart_kwargs = OmegaConf.to_container(cfg.model.denoiser.transformer, resolve=True)
    pixart_kwargs.pop("_target_")
    pixart = reparameterise(dit, timestep=cfg.timestep, **pixart_kwargs).eval()

    modulation_error = max(
        float((a - b).abs().max())
        for a, b in zip(dit_modulations(dit, cfg.timestep), pixart_modulations(pixart, cfg.timestep), strict=True)
    )
    output_error = max_output_error(dit, pixart, cfg.timestep, cfg.check_batch, cfg.seed)
    if max(modulation_error, output_error) > cfg.tolerance:
        raise SystemExit(
            f"re-parameterisation check failed at t={cfg.timestep}: modulation error {modulation_error:.2e}, "
            f"output error {output_error:.2e} > tolerance {cfg.tolerance:.0e}"
        )
    export_network(pixart, cfg.out_dir)

    saving = adaln_saving_for_config({**pixart_kwargs})
    xl2 = adaln_saving_for_config(PIXART_XL_2)
    metrics = {
        "timestep": cfg.timestep,
        "max_modulation_error": modulation_error,
        "max_output_error": output_error,
        "tolerance": cfg.tolerance,
        "dit_parameters": count_parameters(dit),
        "pixart_parameters": count_parameters(pixart),
        "adaln_single_saving_fraction": round(saving["saving_fraction"], 4),
        "adaln_single_saving_params": saving["saving"],
        "xl2_adaln_single_saving_fraction": round(xl2["saving_fraction"], 4),
        "xl2_params_adaln_single": xl2["total_params_adaln_single"],
        "xl2_params_adaln_zero": xl2["total_params_adaln_zero"],
    }
    write_json(cfg.outputs.metrics, metrics)
    print(
        f"reparam at t={cfg.timestep}: max modulation error {modulation_error:.1e}, output error {output_error:.1e}; "
        f"adaLN-single saves {saving['saving_fraction']:.1%} here, {xl2['saving_fraction']:.1%} for XL/2 "
        f"({xl2['total_params_adaln_zero'] / 1e6:.0f}M -> {xl2['total_params_adaln_single'] / 1e6:.0f}M)"
    )
    return metrics


if __name__ == "__main__":
    main()
