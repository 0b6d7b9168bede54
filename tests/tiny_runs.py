"""``train_stage`` on the tiny models as a real command: a few steps, CSV logs, all paths in one workspace."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def tiny_train_command(workspace: Path, stages: list[str], run_prefix: str, *extra: str, max_steps: int = 8) -> list[str]:
    """The command for ``stages`` (several, or ``-m`` in ``extra``: a Hydra multirun) in ``workspace``."""
    multirun = len(stages) > 1 or "-m" in extra
    extra = tuple(arg for arg in extra if arg != "-m")  # Hydra's argparse takes -m only before the overrides
    w = workspace
    cmd = [
        sys.executable, "-m", "pixart_lab.cli.train_stage", f"stage={','.join(stages)}", "init=scratch",
        f"run_name={run_prefix}${{stage.name}}", f"paths.features_dir={w}/features", f"paths.checkpoints_dir={w}/ckpt",
        f"paths.metrics_dir={w}/metrics", f"paths.plots_dir={w}/plots", f"paths.log_dir={w}/logs",
        f"vae.pretrained={w}/models/vae", f"text_encoder.pretrained={w}/models/text_encoder",
        "backbone.num_layers=2", "backbone.attention_head_dim=24", "backbone.hidden_size=48", "backbone.caption_channels=32",
        f"stage.max_steps={max_steps}", "stage.batch_size=8", "stage.warmup_steps=2", "stage.checkpoint_every_n_steps=1",
        "stage.val_every_n_steps=3", "stage.val_batches=1", "stage.grid.every_n_steps=0", "periodic_eval=null", "cost.prior_runs=[]", "sampler.steps=2",
        "logger=csv", "trainer.log_every_n_steps=1", "outputs.plot_every_n_steps=1", "cost.measure_energy=false",
        "num_threads=1", f"hydra.run.dir={w}/hydra/{run_prefix}{'_'.join(stages)}", f"hydra.sweep.dir={w}/hydra/{run_prefix}",
        *extra,
    ]  # fmt: skip
    if multirun:
        cmd.insert(3, "-m")
    return cmd


def start(cmd: list[str]) -> subprocess.Popen:
    """Run ``cmd`` with the tests' helper modules importable (test callbacks) and W&B offline."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]), "WANDB_MODE": "offline"}
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen, timeout: int = 600) -> int:
    """Wait for ``process``; its command and output tails are kept as ``process.output`` for messages."""
    out, err = process.communicate(timeout=timeout)
    process.output = f"{' '.join(process.args)}\n{out[-2000:]}\n{err[-4000:]}"
    return process.returncode
