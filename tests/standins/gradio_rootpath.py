"""A small Gradio app under a root path, standing in for LLaMA-Factory's web UI behind Caddy.

Env: GRADIO_SERVER_PORT, GRADIO_ROOT_PATH (as LLaMA-Factory's container uses them).
"""

import os

import gradio as gr

with gr.Blocks(title="LLaMA-Factory stand-in") as demo:
    gr.Markdown("LLaMA-Factory stand-in web UI", elem_id="lf-standin")

demo.launch(server_name="127.0.0.1", server_port=int(os.environ["GRADIO_SERVER_PORT"]),
            root_path=os.environ.get("GRADIO_ROOT_PATH"), quiet=True)
