"""Stage `corpus`: generate the embedded corpus (only missing files) and reconcile it with data.dvc."""

from __future__ import annotations

from hydra.utils import instantiate
from omegaconf import DictConfig

from pixart_lab.cli.entry import entry_point
from pixart_lab.data.corpus import generate_corpus
from pixart_lab.data.dvc_tracking import sync_with_dvc_file


@entry_point("corpus")
def main(cfg: DictConfig) -> dict:
    summary = generate_corpus(cfg.paths.data_dir, instantiate(cfg.data.generator))
    summary["dvc"] = sync_with_dvc_file(cfg.dvc_file, cfg.on_mismatch) if cfg.dvc_file else "not tracked"
    print(f"corpus: {summary['total']} images ({summary['rendered']} rendered) in {summary['seconds']} s; "
          f"{cfg.dvc_file}: {summary['dvc']}")  # fmt: skip
    return summary


if __name__ == "__main__":
    main()
