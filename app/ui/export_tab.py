"""Export tab: LoRA run → merged → GGUF → quantized → Ollama → verified."""

from __future__ import annotations

import gradio as gr

from ..runtime import Runtime


def build(runtime: Runtime) -> dict:
    with gr.Tab("Export", id="export", elem_id="tab-export"):
        gr.Markdown("Model export is being built.", elem_id="export-placeholder")
    return {}
