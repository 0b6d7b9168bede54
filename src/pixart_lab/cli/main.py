"""``pixart-lab <stage> [hydra overrides]``: one command for every stage entry point."""

from __future__ import annotations

import importlib
import sys

STAGES = {
    "corpus": "pixart_lab.cli.corpus",
    "train_vae": "pixart_lab.cli.train_vae",
    "train_text_encoder": "pixart_lab.cli.train_text_encoder",
    "extract_features": "pixart_lab.cli.extract_features",
    "train_evaluators": "pixart_lab.cli.train_evaluators",
    "train_stage": "pixart_lab.cli.train_stage",
    "reparam": "pixart_lab.cli.reparam",
    "sample": "pixart_lab.cli.sample",
    "evaluate": "pixart_lab.cli.evaluate",
    "compare_runs": "pixart_lab.cli.compare_runs",
    "report": "pixart_lab.cli.report",
    "extract_control": "pixart_lab.cli.extract_control",
    "train_controlnet": "pixart_lab.cli.train_controlnet",
    "evaluate_controlnet": "pixart_lab.cli.evaluate_controlnet",
    "convert_checkpoint": "pixart_lab.cli.convert_checkpoint",
    "caption": "pixart_lab.cli.caption",
    "demo": "pixart_lab.cli.demo",
    "dreambooth": "pixart_lab.cli.dreambooth",
}


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in STAGES:
        names = ", ".join(STAGES)
        sys.exit(f"usage: pixart-lab <stage> [key=value ...]\nstages: {names}")
    stage = sys.argv.pop(1)
    sys.argv[0] = f"pixart-lab {stage}"
    importlib.import_module(STAGES[stage]).main()


if __name__ == "__main__":
    main()
