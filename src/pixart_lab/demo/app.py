"""The web demo's page: a Gradio Blocks UI around a :class:`DemoModel`.

``build_demo`` lays out the page; ``generate_into_gallery`` is the Generate button, testable
without a browser. Each result's settings are its caption, shown in full below the gallery for the
newest or a clicked result. A setting the model cannot take comes back as a ``gr.Error`` message.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import gradio as gr

from pixart_lab.demo.generator import DemoModel, Settings, SettingsError

Gallery = list[tuple]  # (image, caption), newest first
# A previewed result's caption is cut at its end (Gradio centres it and cuts both ends when long).
PAGE_CSS = "#gallery .caption { max-width: 100%; }"


def condition_inputs(model: DemoModel, examples: Sequence[str]) -> dict[str, gr.Component]:
    """What an image is conditioned on: a prompt and a negative prompt, or a DiT's class.

    Keys are :class:`Settings` fields. Further conditions (a ControlNet's control image) join here
    and in ``Settings``; nothing else on the page changes.
    """
    if model.classes is not None:
        names = list(model.classes)
        return {"prompt": gr.Dropdown(names, value=names[0], label="Class", elem_id="prompt")}
    return {
        "prompt": gr.Textbox(value=examples[0] if examples else "", label="Prompt", lines=2, elem_id="prompt"),
        "negative_prompt": gr.Textbox(
            label="Negative prompt", placeholder="empty: the null caption the model was trained with", elem_id="negative_prompt"
        ),
    }


def generate_into_gallery(model: DemoModel, names: Sequence[str], max_images: int, history: Gallery, *values) -> tuple:
    """The Generate button: one image for the settings, put first in the gallery with its caption."""
    try:
        result = model.generate(Settings(**dict(zip(names, values))))
    except SettingsError as error:
        raise gr.Error(str(error), print_exception=False) from None
    history = [(result.image, result.caption), *history][:max_images]
    return history, history, f"{result.caption} ({result.seconds:.1f} s)"


def selected_settings(history: Gallery, event: gr.SelectData) -> str:
    """A clicked result's whole caption (a thumbnail shows only its start)."""
    return history[event.index][1]


def sampler_defaults(model: DemoModel, name: str) -> tuple[int, float]:
    """Steps and guidance scale configured for the chosen sampler (``conf/sampler``)."""
    choice = model.samplers[name]
    return choice.steps, choice.guidance_scale


def build_demo(model: DemoModel, examples: Sequence[str] = (), seed: int = 0, max_images: int = 24) -> gr.Blocks:
    """The page: conditions and sampling settings on the left, the gallery of results on the right."""
    first = next(iter(model.samplers))
    steps, guidance = sampler_defaults(model, first)
    with gr.Blocks(title="PixArt-Lab demo", analytics_enabled=False) as demo:
        gr.Markdown(f"## PixArt-Lab\n{model.describe()}")
        with gr.Row():
            with gr.Column(scale=2):
                inputs = condition_inputs(model, examples)
                inputs["sampler"] = gr.Dropdown(
                    [(s.label, name) for name, s in model.samplers.items()], value=first, label="Sampler", elem_id="sampler"
                )
                inputs["steps"] = gr.Slider(*model.limits.steps, value=steps, step=1, label="Steps", elem_id="steps")
                inputs["guidance_scale"] = gr.Slider(
                    *model.limits.guidance_scale, value=guidance, step=0.5, label="Guidance scale (CFG)", elem_id="guidance_scale"
                )
                inputs["seed"] = gr.Number(value=seed, precision=0, label="Seed", elem_id="seed")
                inputs["size"] = gr.Dropdown(
                    list(model.sizes), value=model.default_size, label="Size (height x width)", elem_id="size"
                )
                button = gr.Button("Generate", variant="primary", elem_id="generate")
            with gr.Column(scale=3):
                gallery = gr.Gallery(label="Results", format="png", columns=2, fit_columns=False, object_fit="contain", elem_id="gallery")
                status = gr.Markdown(elem_id="status")
        if examples and model.classes is None:
            gr.Examples([[e] for e in examples], inputs=[inputs["prompt"]], label="Corpus prompts")
        history = gr.State([])

        gallery.select(selected_settings, history, status)
        inputs["sampler"].change(partial(sampler_defaults, model), inputs["sampler"], [inputs["steps"], inputs["guidance_scale"]])
        button.click(
            partial(generate_into_gallery, model, list(inputs), max_images),
            [history, *inputs.values()],
            [gallery, history, status],
            concurrency_limit=1,  # one pipeline, one generation at a time (the sampler is swapped per request)
        )
    return demo


def serve(demo: gr.Blocks, host: str, port: int) -> None:
    """Serve the page on http://host:port until interrupted."""
    demo.queue().launch(server_name=host, server_port=port, show_error=True, css=PAGE_CSS)
