"""Playground tab: chat with models Ollama serves, one or several side by side, each streaming on its own.

Only wiring: requests and figures live in `app.chat`. Stop cancels the event, which cancels every
column's task and closes its request to Ollama.
"""

from __future__ import annotations

import asyncio
import random
from typing import AsyncIterator

import gradio as gr

from ..chat import Answer, ChatClient, coalesce, validate_messages, validate_models, validate_options
from ..export.evaltext import eval_set
from ..export.validation import InvalidInput
from ..ollama import OllamaError
from ..runs import discover_runs, find_run
from ..runtime import Runtime

COLUMNS = 4
PRIVATE = {"api_visibility": "private"}


def conversation(history: list[dict], system: str, message: str) -> list[dict]:
    """What a model is sent: the system prompt, its own past turns, the new message."""
    turns = [{"role": m["role"], "content": str(m["content"])} for m in history or []
             if m.get("role") in ("user", "assistant") and not (m.get("metadata") or {}).get("title")]
    return ([{"role": "system", "content": system}] if system.strip() else []) + turns + \
        [{"role": "user", "content": message}]


UI_INTERVAL_S = 0.05  # the page gets at most 20 updates a second; tokens in between arrive together
API_INTERVAL_S = 0.025  # /chat: token by token up to 40 tokens/s, then the tokens of each 25 ms together


async def fan_out(client: ChatClient, models: list[str], convs: list[list[dict]], options: dict,
                  interval: float = 0.0):
    """Stream every model at once; yield the list of answers whenever any of them moves (at most once
    per `interval` seconds)."""
    answers = [Answer(m) for m in models]
    changed = asyncio.Event()

    async def one(i: int) -> None:
        async for answer in client.stream(models[i], convs[i], options):
            answers[i] = answer
            changed.set()

    tasks = [asyncio.create_task(one(i)) for i in range(len(models))]
    try:
        while True:
            await changed.wait()
            changed.clear()
            yield answers
            if interval and not all(t.done() for t in tasks):
                await asyncio.sleep(interval)
            if all(t.done() for t in tasks) and not changed.is_set():
                for t in tasks:
                    t.result()  # an unexpected error is raised, not swallowed
                return
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def build(runtime: Runtime) -> dict:
    client = ChatClient(runtime.settings.ollama_url)

    def model_names():
        try:
            tags = runtime.ollama.tags()
        except OllamaError as exc:
            return gr.update(choices=[]), f"⚠️ {exc} Start the ollama service in the Services tab."
        if not tags:
            return gr.update(choices=[]), "Ollama holds no model yet: export a run in the Export tab."
        newest = max(tags, key=lambda m: m.get("modified_at") or "")["name"]
        return (gr.update(choices=sorted(m["name"] for m in tags)),
                f"{len(tags)} model{'s' if len(tags) > 1 else ''} in Ollama; newest: `{newest}`")

    def layout(models: list[str] | None):
        models = (models or [])[:COLUMNS]
        return [gr.update(visible=i < max(1, len(models)), label=models[i] if i < len(models) else "model")
                for i in range(COLUMNS)]

    async def send(models, system, temperature, seed, max_tokens, message, *histories):
        try:
            models = validate_models(models, COLUMNS)
            convs = [validate_messages(conversation(histories[i], system or "", message or ""))
                     for i in range(len(models))]
            options = validate_options({"temperature": float(temperature), "seed": int(seed),
                                        "num_predict": int(max_tokens)})
        except (InvalidInput, TypeError, ValueError) as exc:
            raise gr.Error(str(exc) if isinstance(exc, InvalidInput) else f"Bad option: {exc}.",
                           print_exception=False) from None
        base = [list(h or []) + [{"role": "user", "content": message}] for h in histories]
        async for answers in fan_out(client, models, convs, options, UI_INTERVAL_S):
            chats, footers = [], []
            for i in range(COLUMNS):
                if i < len(answers):
                    a = answers[i]
                    shown = base[i] + ([{"role": "assistant", "content": a.text}] if a.text else [])
                    chats.append(shown)
                    footers.append(a.footer())
                else:
                    chats.append(gr.skip())
                    footers.append(gr.skip())
            yield [*chats, *footers, ""]

    async def chat_api(model: str, messages: list, options: dict) -> AsyncIterator[dict]:
        """Stream one model's answer (public API: /chat): {content, delta, done, stats} per piece."""
        try:
            if not isinstance(model, str):
                raise InvalidInput("Model must be one Ollama model name.")
            model = validate_models(model, 1)[0]
            msgs, opts = validate_messages(messages), validate_options(options)
        except InvalidInput as exc:
            raise gr.Error(str(exc), print_exception=False) from None
        sent = 0
        async for answer in coalesce(client.stream(model, msgs, opts), API_INTERVAL_S):
            if answer.error:
                raise gr.Error(answer.error, print_exception=False)
            delta, sent = answer.text[sent:], len(answer.text)
            yield {"content": answer.text, "delta": delta, "done": answer.done,
                   "stats": answer.stats if answer.done else {}}

    def run_prompt(run_name: str | None):
        """A random held-out example of the run's own data, and its reference answer."""
        try:
            info = find_run(runtime.settings.data_dir, run_name or "")
        except InvalidInput as exc:
            raise gr.Error(str(exc), print_exception=False) from None
        if info is None:
            raise gr.Error("Choose a finished run first.", print_exception=False)
        evals = eval_set(runtime.settings.data_dir, info.path)
        if not evals.from_run:
            raise gr.Error(f"The run's training data cannot be read: {evals.notes[0] if evals.notes else ''}",
                           print_exception=False)
        conv = random.choice(evals.examples[: max(1, len(evals.examples) // 10)])
        user = next(m["content"] for m in reversed(conv) if m["role"] == "user")
        return user, f"**Reference answer (from the run's data):** {conv[-1]['content']}"

    async def compare(compare_base, job_id: str, run_name: str):
        """Run "compare with base" and end with both models side by side."""
        status = {}
        async for _log, status in compare_base(job_id or "", run_name or ""):
            pct = int(100 * float(status.get("progress") or 0))
            yield f"Comparing with the base model: {status.get('stage')} · {pct}%", gr.skip(), gr.skip()
        if status.get("status") != "succeeded":
            raise gr.Error(status.get("error") or "The base model export did not finish.", print_exception=False)
        pair = [_full(n) for n in (status.get("result") or {}).get("compare_pair") or []]
        choices = model_names()[0]
        yield (f"✓ {pair[1]} is the base model, exported like {pair[0]}: ask both the same question.",
               gr.update(value=pair, **({"choices": choices["choices"]} if "choices" in choices else {})),
               gr.Tabs(selected="playground"))

    def runs_choices():
        return gr.update(choices=[r.name for r in discover_runs(runtime.settings.data_dir)])

    with gr.Tab("Playground", id="playground", elem_id="tab-playground"):
        note = gr.Markdown("", elem_id="playground-note")
        with gr.Row():
            models = gr.Dropdown([], multiselect=True, label=f"Ollama models (up to {COLUMNS} side by side)",
                                 elem_id="playground-models", scale=4)
            refresh = gr.Button("↻ Models", elem_id="playground-refresh", scale=1)
        with gr.Row():
            system = gr.Textbox(label="System prompt", lines=1, elem_id="playground-system", scale=3)
            temperature = gr.Slider(0, 2, value=0.7, step=0.05, label="Temperature", elem_id="playground-temp")
            seed = gr.Number(42, precision=0, label="Seed", elem_id="playground-seed")
            max_tokens = gr.Number(256, precision=0, label="Max tokens", elem_id="playground-max", minimum=1)
        with gr.Row():
            chats, footers = [], []
            for i in range(COLUMNS):
                with gr.Column():
                    chats.append(gr.Chatbot(label="model", height=380, elem_id=f"playground-chat-{i}",
                                            visible=i == 0))
                    footers.append(gr.Markdown("", elem_id=f"playground-stats-{i}"))
        message = gr.Textbox(label="Message", lines=2, elem_id="playground-message")
        with gr.Row():
            send_b = gr.Button("Send", variant="primary", elem_id="playground-send")
            stop_b = gr.Button("Stop", variant="stop", elem_id="playground-stop")
            clear_b = gr.Button("Clear", elem_id="playground-clear")
        with gr.Row():
            run = gr.Dropdown([], label="Run (for prompts from its data)", elem_id="playground-run", scale=3)
            sample_b = gr.Button("Prompt from the run", elem_id="playground-sample", scale=1)
        reference = gr.Markdown("", elem_id="playground-reference")

        refresh.click(model_names, None, [models, note], **PRIVATE)
        models.change(layout, [models], chats, **PRIVATE)
        inputs = [models, system, temperature, seed, max_tokens, message, *chats]
        event = gr.on([send_b.click, message.submit], send, inputs, [*chats, *footers, message],
                      concurrency_limit=None, show_progress="hidden", **PRIVATE)
        stop_b.click(None, None, None, cancels=[event], **PRIVATE)
        clear_b.click(lambda: [[]] * COLUMNS + [""] * COLUMNS, None, [*chats, *footers], **PRIVATE)
        sample_b.click(run_prompt, [run], [message, reference], **PRIVATE)
        compare_b = gr.Button("Compare with base", elem_id="playground-compare")
        gr.api(chat_api, api_name="chat", concurrency_limit=None)
    return {"models": models, "model_names": model_names, "note": note, "run": run, "runs_choices": runs_choices,
            "chats": chats, "compare": compare, "compare_button": compare_b}


def _full(name: str) -> str:
    return name if ":" in name.rsplit("/", 1)[-1] else name + ":latest"
