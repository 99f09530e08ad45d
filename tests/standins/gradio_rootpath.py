"""A small Gradio app under a root path, standing in for LLaMA-Factory's web UI behind Caddy.

Env: GRADIO_SERVER_PORT, GRADIO_ROOT_PATH (as LLaMA-Factory's container uses them). Its button
goes through Gradio's queue and SSE, like every LLaMA Board action.
"""

import os

import gradio as gr

with gr.Blocks(title="LLaMA-Factory stand-in") as demo:
    gr.Markdown("LLaMA-Factory stand-in web UI", elem_id="lf-standin")
    clicks = gr.State(0)
    ping = gr.Button("Ping", elem_id="lf-ping")
    answer = gr.Textbox(label="Answer", elem_id="lf-answer")
    ping.click(lambda n: (n + 1, f"pong {n + 1}"), [clicks], [clicks, answer])

demo.launch(server_name="127.0.0.1", server_port=int(os.environ["GRADIO_SERVER_PORT"]),
            root_path=os.environ.get("GRADIO_ROOT_PATH"), quiet=True)
