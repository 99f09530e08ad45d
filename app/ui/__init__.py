"""Gradio UI: one module per tab; `layout.build_app` assembles them."""
