"""The web demo: a Gradio page that generates with any run or exported diffusers pipeline."""
