from functools import partial
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from pixart_lab.evaluation.cost import flops_of
from pixart_lab.models.denoisers import CaptionConditionalPixArt
from pixart_lab.training.diffusion_module import DiffusionModule
from pixart_lab.training.throughput import matmul_flops, median, mfu, time_calls
from tiny_models import tiny_pixart

CONF = str(Path(__file__).resolve().parents[2] / "conf")


def test_mfu_is_achieved_model_flops_over_the_peak():
    # 2 GFLOP a sample at 25 samples/s = 50 GFLOP/s of a 200 GFLOP/s peak
    assert mfu(2e9, 25.0, 200e9) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="peak_flops must be positive, got 0"):
        mfu(2e9, 25.0, 0)


def test_the_peak_matmul_is_counted_as_torch_counts_it():
    a, b = torch.randn(64, 64), torch.randn(64, 64)
    assert matmul_flops(64) == flops_of(lambda: a @ b) == 2 * 64**3


def test_time_calls_times_repeats_after_untimed_warmup():
    calls = []
    seconds = time_calls(lambda: calls.append(1), repeats=3, warmup=2)
    assert len(calls) == 5 and len(seconds) == 3 and all(s >= 0 for s in seconds)
    assert median([3.0, 1.0, 2.0, 100.0]) == 2.5
    with pytest.raises(ValueError, match="repeats must be >= 1, got 0"):
        time_calls(lambda: None, repeats=0)


def module(**switches) -> DiffusionModule:
    denoiser = CaptionConditionalPixArt(tiny_pixart(32), torch.zeros(1, 32), torch.ones(1, dtype=torch.long))
    return DiffusionModule(denoiser, partial(torch.optim.AdamW, lr=1e-3), **switches)


def test_compile_switch_compiles_the_network_in_place_and_keeps_parameter_names():
    eager, compiled = module(), module(compile_network=True)
    assert eager.denoiser.network._compiled_call_impl is None
    assert compiled.denoiser.network._compiled_call_impl is not None
    assert compiled.ema.module.network._compiled_call_impl is None  # the EMA copy is only evaluated
    assert list(compiled.state_dict()) == list(eager.state_dict())  # checkpoints and exports unchanged


def test_gradient_checkpointing_switch_reaches_every_block():
    assert module(gradient_checkpointing=True).denoiser.network.is_gradient_checkpointing
    assert not module().denoiser.network.is_gradient_checkpointing


@pytest.mark.parametrize(("overrides", "fused"), [([], None), (["module.optimizer.fused=true"], True)])
def test_fused_adamw_switch_of_the_stage_config(overrides, fused):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("train_stage", overrides=overrides)
    optimizer = instantiate(cfg.module.optimizer)([torch.nn.Parameter(torch.zeros(3))])
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.defaults["fused"] is fused
    assert cfg.module.compile_network is False and cfg.data_module.num_workers == 0
