"""The DVC pipeline end to end, in a temporary clone: smoke profile, offline, no remote."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[2]

STAGES = (
    "train_vae", "train_text_encoder", "extract_features", "train_evaluators", "ceiling",
    "stage1_pixel", "reparam", "stage2_alignment", "stage3_aesthetic", "baseline_sd", "samples",
    "evaluate@stage1", "evaluate@stage2", "evaluate@stage3", "evaluate@baseline_sd", "report",
    "extract_control", "train_controlnet", "evaluate_controlnet", "dreambooth",
)  # fmt: skip


def environment() -> dict[str, str]:
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "WANDB_MODE": "offline"}


def run(cmd: list[str], cwd: Path) -> str:
    env = environment()
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    return done.stdout + done.stderr


def temporary_clone(tmp_path: Path) -> Path:
    """The working tree's source files (tracked or not, minus ignored ones) in a fresh git repository."""
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    clone = tmp_path / "clone"
    for name in files:
        if (REPO_ROOT / name).is_file():
            (clone / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO_ROOT / name, clone / name)
    run(["git", "init", "-q"], clone)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "clone", "--allow-empty"], clone)
    run(["git", "add", "-A"], clone)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "clone"], clone)
    return clone


def evaluations_of(clone: Path, run_name: str) -> dict:
    return json.loads((clone / "metrics" / f"eval_{run_name}.json").read_text())


def execute_notebook(path: Path, root: Path):
    """Run every cell of a notebook in a fresh kernel (the project's environment), outputs kept."""
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(path, as_version=4)
    os.environ["PIXART_LAB_ROOT"] = str(root)  # the kernel inherits it
    try:
        NotebookClient(notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    finally:
        del os.environ["PIXART_LAB_ROOT"]
    return notebook


def test_smoke_pipeline_runs_offline_and_a_rerun_is_a_no_op(tmp_path):
    clone = temporary_clone(tmp_path)
    (clone / "params.yaml").write_text(yaml.safe_dump({"profile": "smoke"}))
    out = run([sys.executable, "-m", "pixart_lab.cli.corpus", "profile=smoke", "on_mismatch=update"], clone)
    assert "data.dvc: updated" in out
    assert yaml.safe_load((clone / "data.dvc").read_text())["outs"][0]["nfiles"] == 256 + 64 + 64 + 4

    out = run(["dvc", "repro"], clone)
    for stage in STAGES:
        assert f"Running stage '{stage}'" in out
    status = run(["dvc", "status"], clone)
    assert "Data and pipelines are up to date." in status

    again = run(["dvc", "repro"], clone)
    assert "Running stage" not in again
    assert "Data and pipelines are up to date." in run(["dvc", "status"], clone)

    vae = json.loads((clone / "metrics" / "vae.json").read_text())
    assert vae["latent_shape"] == [4, 12, 12] and vae["scaling_factor"] > 0
    features = json.loads((clone / "metrics" / "features.json").read_text())
    assert features["images"] == 256 + 64 + 64 and features["skipped"] == 0
    assert (clone / "models" / "vae" / "config.json").is_file()
    assert (clone / "models" / "text_encoder" / "tokenizer").is_dir()
    assert (clone / "plots" / "vae_loss.csv").read_text().startswith("step,loss,mse")
    assert Image.open(clone / "plots" / "vae_reconstructions.png").size == (8 * 50 + 2, 2 * 50 + 2)

    # The curriculum: stage 1 -> reparam -> stage 2 -> stage 3 -> samples, each from the previous one.
    metrics = {name: json.loads((clone / "metrics" / f"{name}.json").read_text()) for name in ("stage1", "stage2", "stage3")}
    assert [metrics[n]["steps"] for n in metrics] == [4, 4, 4]
    assert [metrics[n]["init"] for n in metrics] == ["scratch", "reparam", "stage2"]
    reparam = json.loads((clone / "metrics" / "reparam.json").read_text())
    assert reparam["max_output_error"] < 1e-5 and reparam["max_modulation_error"] < 1e-5
    samples = json.loads((clone / "metrics" / "samples.json").read_text())
    assert samples["export_max_abs_diff"] == 0.0 and samples["size"] == [96, 96]
    assert Image.open(clone / "plots" / "samples_stage3.png").size == (4 * 98 + 2, 2 * 98 + 2)
    for name in ("stage1", "stage2", "stage3"):
        assert (clone / "checkpoints" / name / "last.ckpt").is_file()
        assert (clone / "checkpoints" / name / "transformer" / "config.json").is_file()
        assert (clone / "plots" / f"{name}_loss.csv").read_text().startswith("step,loss,mse,vlb")
    assert (clone / "exports" / "pixart_stage3" / "model_index.json").is_file()

    # Cost of every training stage; evaluation of every stage's checkpoint.
    for name in ("stage1", "stage2", "stage3"):
        cost = metrics[name]["cost"]
        assert cost["samples"] == 4 * 4 and cost["flops"] == cost["flops_per_sample"] * 16 > 0
        assert cost["energy_kwh"] > 0 and cost["emissions_kg_co2"] > 0 and cost["paper"]["pixart_alpha"]["a100_days"] == 753
    evaluators = json.loads((clone / "metrics" / "evaluators.json").read_text())
    assert evaluators["prompts"] == 6 * 3 and evaluators["fid"]["images_per_set"] == 16
    evaluations = {n: evaluations_of(clone, n) for n in ("stage1", "stage2", "stage3")}
    assert "clip_score" not in evaluations["stage1"]  # class-conditional: FID only
    for name, result in evaluations.items():
        assert result["fid"]["images"] == 16 and result["fid"]["generated"] > 0 and result["fid"]["real_vs_real_floor"] > 0
        assert (clone / "plots" / f"eval_{name}_samples.png").is_file()
    assert evaluations["stage3"]["size"] == [96, 96] and evaluations["stage2"]["size"] == [48, 48]
    for name in ("stage2", "stage3"):
        result = evaluations[name]
        assert result["compositional"]["prompts"] == 18 and "generated" in result["clip_score"]
        # beside each figure: the same images against shuffled prompts, free paraphrases, and the ceiling
        assert set(result["compositional"]["shuffled_prompts"]["tasks"]) == set(result["compositional"]["tasks"])
        assert set(result["compositional"]["free_phrasing"]["tasks"]) == set(result["compositional"]["tasks"])
        assert result["ceiling"]["compositional"]["prompts"] == 18 and result["ceiling"]["fid"]["images"] == 16
    ceiling = json.loads((clone / "metrics" / "ceiling.json").read_text())
    assert ceiling["fid"]["round_trip"] > 0 and "tasks" in ceiling["compositional_sharp_renders"]
    assert set(ceiling["probe_on_round_trips"]) == {"sharp", "round_trip", "images"}
    # A diffusers pipeline folder given by path is evaluated the same way, through plain from_pretrained.
    run([sys.executable, "-m", "pixart_lab.cli.evaluate", "source=exports/pixart_stage3", "name=export",
         "size=[96,96]", "profile=smoke"], clone)  # fmt: skip
    exported = json.loads((clone / "metrics" / "eval_export.json").read_text())
    assert exported["fid"]["real_vs_real_floor"] == evaluations["stage3"]["fid"]["real_vs_real_floor"]
    assert exported["size"] == [96, 96] and exported["compositional"]["prompts"] == 18

    # Quality against compute: every training stage evaluated periodically, the curriculum's cost chained.
    curves = {name: list(csv.DictReader((clone / "plots" / f"{name}_eval.csv").open())) for name in (*metrics, "baseline_sd")}
    for name, rows in curves.items():
        assert [int(r["step"]) for r in rows] == [2, 4], name  # every 2 steps in the smoke profile, the last one final
        assert all(float(r["fid"]) > 0 and float(r["fid_floor"]) > 0 for r in rows)
        assert float(rows[-1]["flops"]) == metrics.get(name, {}).get("cost", {}).get("flops", float(rows[-1]["flops"]))
    assert all(r["clip_score"] == "" for r in curves["stage1"]) and all(r["clip_score"] != "" for r in curves["stage2"])
    stage2_end = float(curves["stage2"][-1]["curriculum_flops"])
    assert stage2_end == pytest.approx(metrics["stage1"]["cost"]["flops"] + metrics["stage2"]["cost"]["flops"])
    assert float(curves["stage3"][0]["curriculum_flops"]) > stage2_end

    # The baseline: SD's UNet layout and objective, the PixArt curriculum's FLOPs as its budget.
    baseline = json.loads((clone / "metrics" / "baseline_sd.json").read_text())
    assert baseline["model"] == "unet_sd" and baseline["init"] == "scratch"
    assert baseline["cost"]["budget"]["flops"] == pytest.approx(sum(metrics[n]["cost"]["flops"] for n in metrics))
    assert (clone / "checkpoints" / "baseline_sd" / "unet" / "config.json").is_file()
    assert json.loads((clone / "checkpoints" / "baseline_sd" / "noise_schedule.json").read_text())["beta_schedule"] == "scaled_linear"
    assert evaluations_of(clone, "baseline_sd")["compositional"]["prompts"] == 18

    # The report: self-contained HTML, the headline ratio, the curves for dvc plots; the notebook redraws them.
    report = json.loads((clone / "metrics" / "report.json").read_text())
    assert set(report["headline"]) == {"fid", "clip_score", "compositional"}
    assert report["paper_compute_ratio"] == pytest.approx(753 / 6250)
    assert report["wandb_report"].startswith("W&B Report not published")
    page = (clone / "reports" / "pixart_vs_sd.html").read_text()
    assert page.count("data:image/png;base64,") == 4 and "src=\"http" not in page
    assert len(list(csv.DictReader((clone / "plots" / "quality_pixart.csv").open()))) == 6
    shown = run(["dvc", "plots", "show", "--json"], clone)
    assert "fid_vs_training_flops" in shown
    notebook = execute_notebook(clone / "notebooks" / "compare_runs.ipynb", clone)
    text = "".join(o.get("text", "") for cell in notebook.cells for o in cell.get("outputs", []))
    assert "6 PixArt evaluations over 3 stages, 2 baseline evaluations" in text and "the baseline's final FID" in text
    assert sum("image/png" in o.get("data", {}) for cell in notebook.cells for o in cell.get("outputs", [])) == 2
    # The ControlNet on the frozen stage-2 model: control latents, training, fidelity and export.
    control = json.loads((clone / "metrics" / "control_features.json").read_text())
    assert control["images"] == 256 + 64 and control["skipped"] == 0 and control["latent_round_trip"]["images"] == 64
    assert json.loads((clone / "features_control" / "manifest.json").read_text())["control"]["name"] == "canny"
    trained = json.loads((clone / "metrics" / "controlnet_train.json").read_text())
    assert trained["steps"] == 4 and trained["base"] == "stage2" and trained["num_layers"] == 3
    assert 0 < trained["trainable_parameters"] < trained["parameters"] and trained["cost"]["samples"] == 16
    assert (clone / "checkpoints" / "controlnet" / "controlnet" / "diffusion_pytorch_model.safetensors").is_file()
    fidelity = json.loads((clone / "metrics" / "controlnet.json").read_text())
    for arm in ("controlled", "uncontrolled", "controlled_vs_other_edges"):
        assert fidelity[arm]["images"] == 8 and 0 <= fidelity[arm]["f1"] <= 1 and 0 <= fidelity[arm]["iou"] <= 1
    assert fidelity["export_max_abs_diff"] == 0 and (clone / "exports" / "pixart_controlnet" / "controlnet" / "config.json").is_file()
    assert Image.open(clone / "plots" / "controlnet_samples.png").size == (4 * 50 + 2, 3 * 50 + 2)
    # DreamBooth from stage 2: LoRA in diffusers' layout, base vs fine-tuned on the same prompts and seeds.
    dreambooth = json.loads((clone / "metrics" / "dreambooth.json").read_text())
    assert dreambooth["steps"] == 4 and dreambooth["subject_images"] == 8 and dreambooth["class_images"] == 8
    assert dreambooth["identifier_pieces"] == ["▁", "s", "k", "s"]
    lora = clone / "checkpoints" / "dreambooth" / "lora" / "pytorch_lora_weights.safetensors"
    assert dreambooth["size_bytes"]["finetuned"] == lora.stat().st_size < dreambooth["size_bytes"]["base_transformer"]
    assert 0 < dreambooth["trainable_parameters"] < dreambooth["parameters"] / 5
    fidelity = dreambooth["subject_fidelity"]
    assert fidelity["clip_object"]["references"]["empty_backgrounds"] == 0  # nothing but background: no object
    assert -1 <= fidelity["clip_object"]["references"]["subject_through_the_vae"] <= 1  # what the VAE lets a model reach
    clip_refs = dreambooth["prompt_fidelity"]["clip_score_subject_prompts"]["references"]
    assert set(clip_refs) == set(fidelity["clip"]["references"]) - {"subject_images"} and all(0 <= v <= 100 for v in clip_refs.values())
    for model in ("base", "finetuned"):
        assert -1 <= fidelity["clip"][model] <= 1 and -1 <= fidelity["clip_object"][model] <= 1
        assert set(dreambooth["prompt_fidelity"]["composition"][model]) == {"background", "probe_relation", "pixel_relation"}
    assert dreambooth["class_prior"]["frechet_to_base_other_seeds"]["base"] > 0
    assert (clone / "plots" / "dreambooth_loss.csv").read_text().startswith("step,loss,instance_loss,prior_loss")
    assert [len(fidelity["clip_object"]["by_prompt"][m]) for m in ("base", "finetuned")] == [4, 4]  # one per evaluation pose
    # subject images | 4 subject poses, a composition and the class prompt, each (base, fine-tuned)
    assert Image.open(clone / "plots" / "dreambooth_samples.png").size == (150 + 8 * 98, 13 * 98)

    # A changed parameter re-runs exactly the stages that read it.
    conf = clone / "conf" / "text_encoder" / "embedded.yaml"
    conf.write_text(conf.read_text().replace("heldout_captions: 1000", "heldout_captions: 999"))
    out = run(["dvc", "repro"], clone)
    assert "Running stage 'train_text_encoder'" in out and "Running stage 'train_vae'" not in out

    # A training stage keeps its checkpoint folder (persist), but a run DVC repeats after a change of
    # its parameters starts over instead of continuing the finished run of the old ones.
    conf = clone / "conf" / "stage" / "1_pixel.yaml"
    conf.write_text(conf.read_text().replace("lr: 2.0e-3", "lr: 1.0e-3"))
    out = run(["dvc", "repro", "-s", "stage1_pixel"], clone)
    assert "is a finished run (step 4) of another configuration (module.optimizer.lr: 0.002 -> 0.001): starting over" in out
    rerun = json.loads((clone / "metrics" / "stage1.json").read_text())
    assert rerun["steps"] == 4 and rerun["cost"]["samples"] == 16 and rerun["train_loss"] != metrics["stage1"]["train_loss"]


def test_default_corpus_regenerates_exactly_what_data_dvc_tracks(tmp_path):
    """The offline guarantee: the deterministic generator reproduces the hash recorded in data.dvc."""
    clone = tmp_path / "repo"
    clone.mkdir()
    shutil.copy2(REPO_ROOT / "data.dvc", clone / "data.dvc")
    run(["git", "init", "-q"], clone)
    run(["dvc", "init", "-q"], clone)
    out = run([sys.executable, "-m", "pixart_lab.cli.corpus", f"hydra.run.dir={tmp_path}/hydra",
               f"paths.data_dir={clone / 'data'}", f"dvc_file={clone / 'data.dvc'}"], REPO_ROOT)  # fmt: skip
    assert "data.dvc: cached" in out

    # ... and a corpus that differs is refused, leaving data.dvc untouched.
    from pixart_lab.data.dvc_tracking import CorpusMismatchError, sync_with_dvc_file

    recorded = (clone / "data.dvc").read_text()
    (clone / "data" / "train" / "images" / "000000.png").write_bytes(b"changed")
    with pytest.raises(CorpusMismatchError, match="records"):
        sync_with_dvc_file(clone / "data.dvc")
    assert (clone / "data.dvc").read_text() == recorded
