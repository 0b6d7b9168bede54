"""Stage `ceiling`: every generated-image metric on held-out real images after a VAE round trip.

FID and CLIP score of half A's round trips, compositional accuracy of the round-tripped sharp renders
of the held-out prompts (per GenEval task), and the probe's attribute accuracy on round-tripped
held-out images (the probe is validated on what a latent model can draw, not only on sharp renders).
"""

from __future__ import annotations

import time

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from pixart_lab.cli.entry import entry_point
from pixart_lab.data.transforms import load_images
from pixart_lab.evaluation.attribute_probe import attribute_accuracy
from pixart_lab.evaluation.ceiling import RoundTripGenerator
from pixart_lab.evaluation.compositional import compositional_accuracy
from pixart_lab.evaluation.metrics import render_scenes
from pixart_lab.evaluation.suite import HeldOutHalves, QualitySuite
from pixart_lab.models.vae import load_vae, round_trip_uint8
from pixart_lab.utils.io import write_json


@entry_point("ceiling")
def main(cfg: DictConfig) -> dict:
    torch.set_num_threads(cfg.num_threads)
    start = time.perf_counter()
    vae = load_vae(cfg.vae.pretrained).eval()
    records = instantiate(cfg.data.splits.heldout).records()
    n = cfg.eval.fid.images
    heldout = HeldOutHalves.load(records, n, cfg.data.image_size, progress=True)
    suite = QualitySuite(heldout, cfg.eval.fid, cfg.eval.clip, cfg.eval.evaluators_dir)
    evaluator = suite.compositional
    renders = render_scenes([p.scene for p in evaluator.prompts], seed=cfg.seed)
    round_trip = RoundTripGenerator(vae)
    round_trip.register(heldout.captions_a, heldout.images_a)
    round_trip.register([p.prompt for p in evaluator.prompts], renders)
    results, _ = suite(round_trip, text_conditioned=True)

    sharp = [r for r in records if (r.scene or {}).get("quality") == cfg.data.clean_quality][: cfg.probe_images]
    sharp_images, sharp = load_images(sharp, cfg.data.image_size, cfg.data.image_size, progress=False)
    scenes = [r.scene for r in sharp]
    metrics = {
        "fid": {"round_trip": results["fid"], "real_vs_real_floor": suite.floor(), "images": n},
        "clip_score": {"round_trip": results["clip_score"], "real": suite.real_clip_score()},
        "compositional": results["compositional"],
        "compositional_sharp_renders": compositional_accuracy(
            evaluator.prompts, evaluator.probe.read(renders), evaluator.valid_attributes
        ),
        "probe_on_round_trips": {
            "sharp": attribute_accuracy(evaluator.probe, sharp_images, scenes),
            "round_trip": attribute_accuracy(evaluator.probe, round_trip_uint8(vae, sharp_images), scenes),
            "images": len(sharp),
        },
        "seconds": round(time.perf_counter() - start, 1),
    }
    write_json(cfg.outputs.metrics, metrics)
    print(f"ceiling: compositional {metrics['compositional']['overall']} "
          f"(sharp renders {metrics['compositional_sharp_renders']['overall']}), "
          f"FID {results['fid']:.2f} (floor {metrics['fid']['real_vs_real_floor']:.2f}), "
          f"CLIP score {results['clip_score']:.2f}")  # fmt: skip
    return metrics


if __name__ == "__main__":
    main()
