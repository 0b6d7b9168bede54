"""Hard kills for the reliability tests: a training callback that SIGKILLs its own process at a chosen
point, a watcher that SIGKILLs a process once its output reaches a size, and the random choice of
those points from a printed seed (``KILL_SEED=<n>`` replays one).

A run gets the callback from the command line, like any configured callback:
``+callbacks.kill._target_=interruptions.KillAt +callbacks.kill.step=5 +callbacks.kill.phase=saving``
(with ``tests/`` on ``PYTHONPATH``).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from collections.abc import Callable

import lightning as L

# Where in step `step` the process dies; in every case the last whole checkpoint is that of step - 1.
PHASES = (
    "batch_start",  # the batch is loaded, nothing computed
    "before_update",  # forward and backward done, the optimiser has not stepped
    "after_update",  # weights, EMA and counters updated, the step's checkpoint not written
    "saving",  # the step's checkpoint assembled in memory, being written
)


def kill_seed() -> int:
    """``KILL_SEED`` from the environment, else a fresh random one (tests print it in their messages)."""
    return int(os.environ.get("KILL_SEED", random.SystemRandom().randrange(2**31)))


def kill_point(seed: int, max_steps: int) -> tuple[int, str]:
    """A step in 2..max_steps-1 and a phase, drawn from ``seed``."""
    rng = random.Random(seed)
    return rng.randint(2, max_steps - 1), rng.choice(PHASES)


class KillAt(L.Callback):
    """SIGKILL this process in ``phase`` of training step ``step`` (1-based)."""

    def __init__(self, step: int, phase: str):
        if phase not in PHASES:
            raise ValueError(f"phase {phase!r}: expected one of {PHASES}")
        self.step, self.phase = step, phase

    def _kill_if(self, phase: str, steps_done: int) -> None:
        if phase == self.phase and steps_done == self.step:
            os.kill(os.getpid(), signal.SIGKILL)

    def on_train_batch_start(self, trainer: L.Trainer, *args) -> None:
        self._kill_if("batch_start", trainer.global_step + 1)

    def on_before_optimizer_step(self, trainer: L.Trainer, *args) -> None:
        self._kill_if("before_update", trainer.global_step + 1)

    def on_train_batch_end(self, trainer: L.Trainer, *args) -> None:
        self._kill_if("after_update", trainer.global_step)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        self._kill_if("saving", trainer.global_step)


def kill_when(process: subprocess.Popen, condition: Callable[[], bool], timeout: float = 300.0) -> None:
    """SIGKILL ``process`` as soon as ``condition()`` holds (polled every 10 ms); fail if it ends first."""
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"the process ended ({process.returncode}) before the kill point:\n{process.stderr.read()[-3000:]}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"kill point not reached in {timeout} s")
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
