"""Bad configuration ends a stage with one line naming the key or path (exit 2: command line, 1: run time)."""

from __future__ import annotations

import importlib
import logging
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from hydra.core.global_hydra import GlobalHydra

from pixart_lab.cli.entry import type_problem


@contextmanager
def logging_left_as_found() -> Iterator[None]:
    """Undo what Hydra's logging set-up does to this process' loggers (disabled ones, root handlers)."""
    loggers = [lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger)]
    states = [(lg, lg.disabled, lg.level, lg.propagate) for lg in loggers]
    root = (logging.root.level, list(logging.root.handlers))
    try:
        yield
    finally:
        for lg, disabled, level, propagate in states:
            lg.disabled, lg.level, lg.propagate = disabled, level, propagate
        logging.root.setLevel(root[0])
        logging.root.handlers[:] = root[1]


def run_stage(module: str, overrides: list[str], tmp_path, monkeypatch, capsys) -> tuple[int, list[str]]:
    """Run an entry point in this process as its command line would; (exit status, stderr lines)."""
    GlobalHydra.instance().clear()
    quiet = ["hydra/job_logging=disabled", "hydra/hydra_logging=disabled", f"hydra.run.dir={tmp_path}/hydra"]
    monkeypatch.setattr(sys, "argv", [module, *overrides, *quiet])
    with pytest.raises(SystemExit) as exit_, logging_left_as_found():
        importlib.import_module(module).main()
    return exit_.value.code, [line for line in capsys.readouterr().err.splitlines() if line.strip()]


@pytest.mark.parametrize(
    "module, overrides, status, message",
    [("pixart_lab.cli.train_stage", ["stage.max_stepz=3"], 2,
      "unknown key 'stage.max_stepz' (a new key needs a leading +: +stage.max_stepz=...)"),
     ("pixart_lab.cli.train_stage", ["stage=9_nope"], 2, "stage=9_nope: no such option (available: 1_pixel, 2_alignment, 3_aesthetic, baseline_sd, controlnet)"),
     ("pixart_lab.cli.train_stage", ["stage.max_steps=abc"], 2,
      "stage.max_steps=abc: stage.max_steps expected an integer, found 'abc' (default 3000)"),
     ("pixart_lab.cli.train_stage", ["stage=1_pixel", "stage.lr=fast"], 2,
      "stage.lr=fast: stage.lr expected a number, found 'fast' (default 0.002)"),
     ("pixart_lab.cli.train_vae", ["trainer.enable_checkpointing=maybe"], 2,
      "trainer.enable_checkpointing=maybe: trainer.enable_checkpointing expected true or false, found 'maybe' (default False)"),
     ("pixart_lab.cli.train_stage", ["stage.max_steps=["], 2, "cannot parse 'stage.max_steps=[': no viable alternative at input '['"),
     ("pixart_lab.cli.extract_features", ["data=folder"], 2, "data.root is required: set data.root=..."),
     ("pixart_lab.cli.extract_features", ["data=folder", "data.root=/nonexistent"], 1, "image folder not found: /nonexistent/train"),
     ("pixart_lab.cli.train_stage", ["init=scratch", "paths.features_dir=/nonexistent"], 1,
      "feature cache file not found: /nonexistent/manifest.json (run the extract_features stage)"),
     ("pixart_lab.cli.train_stage", ["init=nowhere"], 1,
      "init='nowhere': no transformer weights (diffusion_pytorch_model.safetensors, diffusion_pytorch_model.safetensors.index.json, "
      "diffusion_pytorch_model.bin) in checkpoints/nowhere/transformer; run that stage first, or give an official .pth, "
      "a diffusers transformer folder or a pipeline folder")],
)  # fmt: skip
def test_bad_configuration_is_one_line_naming_the_key_or_path(module, overrides, status, message, tmp_path, monkeypatch, capsys):
    code, stderr = run_stage(module, overrides, tmp_path, monkeypatch, capsys)
    assert code == status
    assert len(stderr) == 1 and stderr[0].startswith(f"error: {message}"), stderr


def test_a_missing_resume_checkpoint_is_named(tiny_features, tmp_path, monkeypatch, capsys):
    overrides = ["init=scratch", f"paths.features_dir={tiny_features}", f"resume={tmp_path}/gone.ckpt"]
    code, stderr = run_stage("pixart_lab.cli.train_stage", overrides, tmp_path, monkeypatch, capsys)
    assert (code, stderr) == (1, [f"error: resume={tmp_path}/gone.ckpt: no such checkpoint"])


def test_the_command_line_gets_one_line_and_a_usage_status(tmp_path):
    """Through the ``pixart-lab`` console script, from another directory (the config is found all the same)."""
    script = Path(sys.executable).parent / "pixart-lab"
    done = subprocess.run(
        [str(script), "train_stage", "stage.max_stepz=3", f"hydra.run.dir={tmp_path}"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [
        "error: unknown key 'stage.max_stepz' (a new key needs a leading +: +stage.max_stepz=...)"
    ]


@pytest.mark.parametrize(
    "default, value, problem",
    [(3, 4, None), (3, "x", "expected an integer, found 'x'"), (3, 2.5, "expected an integer, found 2.5"),
     (0.1, 1, None), (0.1, True, "expected a number, found True"), (True, 1, "expected true or false, found 1"),
     ([1], [2, 3], None), ([1], 5, "expected a list, found 5"), ({"a": 1}, "x", "expected a mapping, found 'x'"),
     ("dense", 5, None), (None, "anything", None), (3, None, None), (3, "${stage.max_steps}", None)],
)  # fmt: skip
def test_type_rules(default, value, problem):
    assert type_problem(default, value) == problem
