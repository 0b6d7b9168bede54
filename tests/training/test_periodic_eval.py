"""The periodic evaluation's curve survives a resume: restored rows are written back, none is repeated."""

from __future__ import annotations

import csv
from types import SimpleNamespace

from diffusers import DPMSolverMultistepScheduler

from pixart_lab.training.periodic_eval import CURVE_COLUMNS, PeriodicEvaluation

ROWS = [{"step": 2, "fid": 40.0, "fid_floor": 10.0, "flops": 1e9}, {"step": 4, "fid": 30.0, "fid_floor": 10.0, "flops": 2e9}]


def callback(tmp_path) -> PeriodicEvaluation:
    return PeriodicEvaluation(
        heldout=None, image_size=64, fid={}, clip=None, evaluators_dir=str(tmp_path), vae=str(tmp_path / "no_vae"),
        scheduler=DPMSolverMultistepScheduler(), csv_path=str(tmp_path / "plots" / "run_eval.csv"), every_n_steps=2,
    )  # fmt: skip


def test_a_finished_run_restored_from_its_checkpoint_rewrites_the_curve_without_evaluating_again(tmp_path):
    evaluation = callback(tmp_path)
    evaluation.load_state_dict({"rows": ROWS})
    logged = []
    trainer = SimpleNamespace(global_step=4, is_global_zero=True, loggers=[SimpleNamespace(log_metrics=logged.append)])
    evaluation.evaluate = lambda *args: (_ for _ in ()).throw(AssertionError("evaluated a step it already has"))

    evaluation.on_train_end(trainer, pl_module=None)  # DVC removed the CSV before re-running the stage

    with open(tmp_path / "plots" / "run_eval.csv") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == CURVE_COLUMNS
        assert [(int(r["step"]), float(r["fid"]), float(r["flops"])) for r in reader] == [(2, 40.0, 1e9), (4, 30.0, 2e9)]
    assert logged == [] and evaluation.state_dict() == {"rows": ROWS}


def test_a_new_step_is_evaluated_once_appended_and_logged(tmp_path):
    evaluation = callback(tmp_path)
    evaluation.load_state_dict({"rows": ROWS[:1]})
    calls, logged = [], []
    evaluation.evaluate = lambda trainer, module: calls.append(trainer.global_step) or dict(ROWS[1])
    trainer = SimpleNamespace(global_step=4, is_global_zero=True, callbacks=[], loggers=[SimpleNamespace(log_metrics=lambda m, step: logged.append((step, m)))])

    evaluation.on_train_batch_end(trainer, None)
    evaluation.on_train_end(trainer, None)  # the last step was just evaluated: not again

    assert calls == [4] and evaluation.rows == ROWS
    assert logged == [(4, {"eval/fid": 30.0, "eval/fid_floor": 10.0, "eval/flops": 2e9})]
    assert len((tmp_path / "plots" / "run_eval.csv").read_text().splitlines()) == 3
