import subprocess
import sys
from dataclasses import fields

import gradio as gr
import numpy as np
import pytest
from tiny_pipelines import demo_model, tiny_pipeline

from pixart_lab.demo.app import build_demo, generate_into_gallery
from pixart_lab.demo.generator import Settings

PROMPT = "a sharp image of a large blue square in the top left on a grey background"
NAMES = ["prompt", "negative_prompt", "sampler", "steps", "guidance_scale", "seed", "size"]


def components(demo: gr.Blocks) -> dict[str, dict]:
    return {c["props"]["elem_id"]: c for c in demo.config["components"] if c["props"].get("elem_id")}


def test_page_has_an_input_for_every_setting_and_offers_the_models_choices(tiny_ms_model):
    page = components(build_demo(tiny_ms_model, examples=[PROMPT], seed=5))
    assert {f.name for f in fields(Settings)} <= set(page)
    assert {"generate", "gallery", "status"} <= set(page)
    assert page["prompt"]["props"]["value"] == PROMPT and page["seed"]["props"]["value"] == 5
    assert [value for _, value in page["size"]["props"]["choices"]] == list(tiny_ms_model.sizes)
    assert page["size"]["props"]["value"] == "128x128"
    assert page["sampler"]["props"]["choices"] == [("DPM-Solver++", "dpm_solver"), ("SA-Solver", "sa_solver"), ("DDIM", "ddim")]
    assert (page["steps"]["props"]["value"], page["guidance_scale"]["props"]["value"]) == (20, 4.5)  # DPM-Solver++'s defaults
    assert (page["steps"]["props"]["minimum"], page["steps"]["props"]["maximum"]) == (1, 200)


def test_a_dit_page_offers_its_classes_instead_of_a_prompt(tiny_vae, tiny_text_encoder):
    page = components(build_demo(demo_model(tiny_pipeline("dit", tiny_vae, tiny_text_encoder)), examples=[PROMPT]))
    assert page["prompt"]["type"] == "dropdown" and "negative_prompt" not in page
    assert page["prompt"]["props"]["choices"] == [("blue square", "blue square"), ("red circle", "red circle")]
    assert [value for _, value in page["size"]["props"]["choices"]] == ["64x64"]


def test_generate_puts_the_newest_image_first_with_its_settings(tiny_ms_model):
    values = dict(prompt=PROMPT, negative_prompt="", sampler="sa_solver", steps=3, guidance_scale=4.5, seed=1, size="184x88")
    gallery, history, status = generate_into_gallery(tiny_ms_model, NAMES, 2, [], *values.values())
    assert gallery is history and len(gallery) == 1
    image, caption = gallery[0]
    assert image.size == (88, 184) and caption == f"seed 1 · 184x88 · SA-Solver · 3 steps · CFG 4.5 · '{PROMPT}'"
    assert status.startswith(caption) and status.endswith(" s)")

    for seed in (2, 3):
        gallery, history, _ = generate_into_gallery(tiny_ms_model, NAMES, 2, history, *{**values, "seed": seed}.values())
    assert [caption.split(" · ")[0] for _, caption in gallery] == ["seed 3", "seed 2"]  # newest first, at most 2 kept
    assert not np.array_equal(np.asarray(gallery[0][0]), np.asarray(gallery[1][0]))


def test_an_invalid_setting_becomes_a_message_on_the_page(tiny_ms_model):
    values = [PROMPT, "", "dpm_solver", 20, 0.5, 0, "128x128"]
    with pytest.raises(gr.Error) as error:
        generate_into_gallery(tiny_ms_model, NAMES, 24, [], *values)
    assert error.value.message == "guidance scale must be from 1.0 to 20.0, got 0.5"


def test_a_missing_checkpoint_stops_the_demo_with_one_line_naming_the_path(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "pixart_lab.cli.demo", "source=stage3", f"paths.checkpoints_dir={tmp_path}", f"hydra.run.dir={tmp_path}/run"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 1
    assert out.stderr.splitlines() == [
        "error: source='stage3': no transformer weights (diffusion_pytorch_model.safetensors, "
        "diffusion_pytorch_model.safetensors.index.json, diffusion_pytorch_model.bin) in "
        f"{tmp_path / 'stage3' / 'transformer'}; run that stage first, or give an official .pth, "
        "a diffusers transformer folder or a pipeline folder"
    ]
