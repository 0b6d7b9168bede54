from types import SimpleNamespace

import torch

from pixart_lab.training.history import MetricHistory


def test_history_records_training_rows_and_validation_at_the_step_it_ran(tmp_path):
    history = MetricHistory(tmp_path / "loss.csv", keys=["train/loss", "val/loss"], every_n_steps=2)
    trainer = SimpleNamespace(callback_metrics={}, global_step=0, max_steps=5, sanity_checking=False, is_global_zero=True)
    for step, loss in enumerate([0.9, 0.8, 0.7, 0.6, 0.5], start=1):
        trainer.global_step = step
        trainer.callback_metrics["train/loss"] = torch.tensor(loss)
        history.on_train_batch_end(trainer)
        if step in (2, 5):
            trainer.callback_metrics["val/loss"] = torch.tensor(loss / 2)
            history.on_validation_end(trainer, None)
    history.on_train_end(trainer, None)
    assert (tmp_path / "loss.csv").read_text().splitlines() == [
        "step,loss,val_loss", "2,0.8,0.4", "4,0.6,", "5,0.5,0.25",
    ]
