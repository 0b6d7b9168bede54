"""Scale and sweep configs compose into what Lightning, submitit and Optuna take; the ablations are
one command each; a multirun job's outputs, W&B name, sweep objective and a failed DDP job ending the
sweep (cli/multirun.py)."""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import get_class, instantiate
from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy
from omegaconf import OmegaConf, open_dict

import pixart_lab.config  # noqa: F401  (resolvers)
from pixart_lab.cli.multirun import DISTRIBUTED_ENV, JOB_DIR_ENV, SweepStopped, single_job, sweep_objective
from pixart_lab.utils.errors import ConfigError

CONF = str(Path(__file__).resolve().parents[2] / "conf")


def train_stage(*overrides: str, hydra: bool = False):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose("train_stage", list(overrides), return_hydra_config=hydra)


def test_ddp_trainer_spans_devices_and_nodes():
    cfg = train_stage("trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.num_nodes=3")
    trainer = instantiate(cfg.trainer, logger=False)
    assert isinstance(trainer.strategy, DDPStrategy) and trainer.strategy._ddp_kwargs["find_unused_parameters"] is False
    assert (trainer.num_nodes, trainer.num_devices, trainer.world_size) == (3, 2, 6)
    assert trainer.strategy.checkpoint_io.__class__.__name__ == "AtomicCheckpointIO"  # the stages' atomic checkpoints


def test_fsdp_shards_one_transformer_block_at_a_time():
    cfg = train_stage("trainer=fsdp", "trainer.num_nodes=2")
    strategy = instantiate(cfg.trainer.strategy)
    assert isinstance(strategy, FSDPStrategy) and cfg.trainer.num_nodes == 2
    from diffusers.models.attention import BasicTransformerBlock

    assert strategy.kwargs["auto_wrap_policy"]._module_classes == {BasicTransformerBlock}
    assert strategy.sharding_strategy.name == "FULL_SHARD"


def test_slurm_launcher_asks_for_the_trainers_nodes_and_devices():
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # extends the plugin's schema rather than shadowing it (Hydra warns then)
        cfg = train_stage("hydra/launcher=slurm", "trainer=ddp", "trainer.devices=8", "trainer.num_nodes=2",
                          "hydra.launcher.partition=gpu", hydra=True)  # fmt: skip
    launcher = cfg.hydra.launcher
    assert get_class(launcher._target_).__name__ == "SlurmLauncher"
    assert (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node, launcher.partition) == (2, 8, 8, "gpu")


def test_optuna_search_optimises_a_reported_metric():
    cfg = train_stage("hparams_search=optuna", hydra=True)
    sweeper = cfg.hydra.sweeper
    assert cfg.hydra.mode.name == "MULTIRUN" and get_class(sweeper._target_).__name__ == "OptunaSweeper"
    assert (cfg.optimized_metric, sweeper.direction, sweeper.storage, sweeper.n_trials) == ("val_ema_loss", "minimize", None, 20)
    assert set(sweeper.params) == {"stage.lr", "stage.warmup_steps", "module.optimizer.weight_decay", "module.condition_dropout"}
    assert sweeper.sampler._target_ == "optuna.samplers.TPESampler"


@pytest.mark.parametrize(
    "experiment, arm, run_name, expected",
    [("ablation_init", "init=reparam", "ablation_init_reparam", {"init": "reparam", "cost.prior_runs": ["stage1"]}),
     ("ablation_init", "init=scratch", "ablation_init_scratch", {"init": "scratch", "cost.prior_runs": []}),
     ("ablation_caption", "caption=sparse", "ablation_caption_sparse", {"data_module.caption": "sparse", "init": "reparam"}),
     ("ablation_adaln", "model=pixart_per_block_adaln", "ablation_adaln_pixart_per_block_adaln", {"init": "scratch"})],
)  # fmt: skip
def test_each_ablation_is_one_multirun_of_stage_2(experiment, arm, run_name, expected):
    swept = train_stage(f"experiment={experiment}", hydra=True)
    assert swept.hydra.mode.name == "MULTIRUN" and len(str(next(iter(swept.hydra.sweeper.params.values()))).split(",")) == 2
    cfg = train_stage(f"experiment={experiment}", arm, "profile=smoke")  # one job of the sweep
    assert (cfg.stage.name, cfg.run_name, cfg.task_name, cfg.stage.max_steps) == ("stage2", run_name, experiment, 4)
    for key, value in expected.items():
        assert OmegaConf.select(cfg, key) == value, key


def test_the_adaln_ablation_arms_differ_by_one_timestep_mlp_per_extra_block():
    counts = {}
    for model in ("pixart", "pixart_per_block_adaln"):
        cfg = train_stage("experiment=ablation_adaln", f"model={model}")
        with torch.device("meta"):
            counts[model] = sum(p.numel() for p in instantiate(cfg.model.denoiser.transformer).parameters())
    d, layers = cfg.backbone.hidden_size, cfg.backbone.num_layers
    assert counts["pixart_per_block_adaln"] - counts["pixart"] == (layers - 1) * (6 * d * d + 6 * d) == 626_400


def test_outputs_stay_in_the_repository_folders_outside_a_multirun(monkeypatch):
    monkeypatch.delenv(JOB_DIR_ENV, raising=False)
    cfg = train_stage()
    assert (cfg.run_dir, cfg.outputs.metrics, cfg.logger.wandb.save_dir) == ("checkpoints/stage2", "metrics/stage2.json", "logs")
    assert (cfg.logger.wandb.name, cfg.logger.wandb.group) == ("stage2", "embedded")
    # A DDP rank that Lightning started for a multirun job writes in that job's folder.
    monkeypatch.setenv(JOB_DIR_ENV, "/sweep/3")
    assert (cfg.run_dir, cfg.outputs.metrics) == ("/sweep/3/checkpoints/stage2", "/sweep/3/metrics/stage2.json")
    assert train_stage("job_outputs=false").outputs.plot == "plots/stage2_loss.csv"


def test_sweep_objective_is_the_configured_metric():
    metrics = {"val_ema_loss": 0.25, "quality": {"fid": 31.5, "prompts": "18"}}
    assert sweep_objective(metrics, OmegaConf.create({"optimized_metric": None})) is metrics
    assert sweep_objective(metrics, OmegaConf.create({"optimized_metric": "quality.fid"})) == 31.5
    with pytest.raises(ConfigError, match=r"optimized_metric=quality.clip_score: the run reports no 'clip_score' \(found: fid, prompts\)"):
        sweep_objective(metrics, OmegaConf.create({"optimized_metric": "quality.clip_score"}))
    with pytest.raises(ConfigError, match="expected a number, found '18'"):
        sweep_objective(metrics, OmegaConf.create({"optimized_metric": "quality.prompts"}))


def test_a_multirun_job_that_fails_after_starting_ddp_ranks_stops_the_sweep(monkeypatch, tmp_path):
    cfg = train_stage(hydra=True)
    with open_dict(cfg):
        cfg.hydra.mode, cfg.hydra.runtime.output_dir, cfg.hydra.job.num = RunMode.MULTIRUN, str(tmp_path / "3"), 3
        cfg.hydra.overrides.task = ["stage.lr=4e-3"]
    monkeypatch.setattr(HydraConfig.instance(), "cfg", None)  # restored afterwards
    HydraConfig.instance().set_config(cfg)
    monkeypatch.setattr(sys, "argv", ["train_stage.py", "-m", "stage.lr=1e-3,4e-3"])
    for key in DISTRIBUTED_ENV:
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(RuntimeError, match="bad batch"), single_job():  # one process: Hydra goes on with the next job
        assert sys.argv[1:] == ["stage.lr=4e-3", "hydra.mode=RUN"] and os.environ[JOB_DIR_ENV] == str(tmp_path / "3")
        raise RuntimeError("bad batch")
    with pytest.raises(SweepStopped, match="job 3 failed with its DDP ranks started: the sweep stops") as stopped, single_job():
        os.environ.update(MASTER_PORT="29500", LOCAL_RANK="0")  # as Lightning's launcher sets them
        monkeypatch.setattr("pixart_lab.utils.device.distributed_layout", lambda: (0, 2))  # a process group of 2
        raise RuntimeError("bad batch")
    assert isinstance(stopped.value.__cause__, RuntimeError)
    assert sys.argv[1:] == ["-m", "stage.lr=1e-3,4e-3"] and not any(key in os.environ for key in DISTRIBUTED_ENV)


@pytest.mark.parametrize("profile, steps", [("default", 4200), ("smoke", 6)])
def test_stage2_long_continues_stage2_to_the_profiles_step(profile, steps):
    cfg = train_stage("experiment=stage2_long", f"profile={profile}")
    assert (cfg.run_name, cfg.resume, cfg.init) == ("stage2_long", "checkpoints/stage2/last.ckpt", "reparam")
    assert cfg.stage.max_steps == cfg.trainer.max_steps == steps
    base = train_stage("stage=2_alignment", f"profile={profile}")
    assert steps > base.stage.max_steps and base.stage.lr == cfg.stage.lr and base.module == cfg.module  # the same run, longer
