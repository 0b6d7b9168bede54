"""A callback that keeps a metric history and writes it as a CSV for ``dvc plots``."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path

import lightning as L

from pixart_lab.utils.io import atomic_write_bytes


def write_csv(path: str | Path, rows: Sequence[dict], columns: Sequence[str]) -> None:
    """Write ``rows`` (dicts) as a CSV with ``columns`` atomically."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(path, buffer.getvalue().encode())


class MetricHistory(L.Callback):
    """Every ``every_n_steps`` training steps, record the logged values of ``keys``; write them at the end.

    Column names drop the ``train/`` prefix, so ``train/loss`` becomes ``loss`` (DVC plots' y-axis);
    other prefixes stay, joined by ``_`` (``val/loss`` becomes ``val_loss``).
    """

    def __init__(self, path: str | Path, keys: Sequence[str] = ("train/loss",), every_n_steps: int = 10):
        self.path, self.keys, self.every_n_steps = Path(path), list(keys), every_n_steps
        self.rows: list[dict] = []

    @staticmethod
    def column(key: str) -> str:
        return key.removeprefix("train/").replace("/", "_")

    def on_train_batch_end(self, trainer: L.Trainer, *args) -> None:
        step = trainer.global_step
        if step % self.every_n_steps and step != trainer.max_steps:
            return
        metrics = trainer.callback_metrics
        row = {"step": step}
        row.update({self.column(k): round(float(metrics[k]), 6) for k in self.keys if k in metrics})
        self.rows.append(row)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            write_csv(self.path, self.rows, ["step", *map(self.column, self.keys)])
