"""Chat with models served by Ollama: one streamed answer per model, with its figures.

Runs on the event loop with httpx's async client: cancelling the task (Gradio's Stop, a closed
page, an API client's cancel) closes the request to Ollama at once. Every failure becomes one
sentence (`ChatError`), so one broken column never breaks the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass, field, replace
from typing import AsyncIterator

import httpx

from .export.validation import InvalidInput, check_text, validate_ollama_name

MAX_MESSAGE = 32_000
ROLES = ("system", "user", "assistant")
OPTION_LIMITS = {"temperature": (0.0, 5.0), "seed": (-1, 2**31 - 1), "num_predict": (1, 32_768),
                 "num_ctx": (64, 1 << 20), "top_p": (0.0, 1.0), "top_k": (0, 1000)}


class ChatError(Exception):
    """One sentence for the user."""


@dataclass
class Answer:
    model: str
    text: str = ""
    done: bool = False
    error: str = ""
    stats: dict = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    first_token_s: float | None = None

    def footer(self) -> str:
        if self.error:
            return f"⚠️ {self.error}"
        if not self.done:
            return "…"
        s = self.stats
        stop = "stopped on its own" if s.get("done_reason") == "stop" else "cut off (token limit)" \
            if s.get("done_reason") == "length" else f"ended ({s.get('done_reason') or 'no reason given'})"
        speed = f"{s['tokens_per_s']:.1f} tok/s" if s.get("tokens_per_s") else "? tok/s"
        return f"{speed} · {s.get('prompt_tokens', '?')} prompt tokens · done_reason {s.get('done_reason')} · {stop}"


def validate_messages(messages: object) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise InvalidInput("Messages must be a non-empty list of {role, content}.")
    out = []
    for m in messages:
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise InvalidInput(f"Each message needs a role ({', '.join(ROLES)}) and a content.")
        out.append({"role": m["role"], "content": check_text("Message", m.get("content") or "", MAX_MESSAGE,
                                                            allow_control=True)})
    if out[-1]["role"] != "user" or not out[-1]["content"].strip():
        raise InvalidInput("Type a message first: the conversation must end with a non-empty user message.")
    return out


def validate_options(options: object) -> dict:
    if options in (None, ""):
        return {}
    if not isinstance(options, dict):
        raise InvalidInput("Options must be an object such as {\"temperature\": 0.7}.")
    out = {}
    for key, value in options.items():
        if key not in OPTION_LIMITS:
            raise InvalidInput(f"Unknown option {key!r}; use {', '.join(OPTION_LIMITS)}.")
        low, high = OPTION_LIMITS[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
            raise InvalidInput(f"Option {key} must be a number from {low} to {high}, not {value!r}.")
        out[key] = int(value) if key in ("seed", "num_predict", "num_ctx", "top_k") else float(value)
    return out


def _error_sentence(model: str, base_url: str, status: int, body: str) -> str:
    try:
        detail = str(json.loads(body).get("error") or body)
    except ValueError:
        detail = body.strip() or f"HTTP {status}"
    if status == 404 or "not found" in detail:
        return f"Ollama has no model named {model!r}; export one or pick another."
    if "exceeds the context length" in detail:
        return (f"The conversation is longer than {model}'s context window; clear the chat or shorten the "
                "message.")
    return f"Ollama answered HTTP {status} for {model}: {detail[:300]}"


class ChatClient:
    """Streams /api/chat answers on the running event loop (one httpx.AsyncClient per loop)."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url.rstrip("/")
        self._clients: dict[int, httpx.AsyncClient] = {}

    def _client(self) -> httpx.AsyncClient:
        loop = id(asyncio.get_running_loop())
        client = self._clients.get(loop)
        if client is None:
            client = self._clients[loop] = httpx.AsyncClient(
                base_url=self.base_url, timeout=httpx.Timeout(30.0, read=600.0),
                limits=httpx.Limits(max_connections=32, max_keepalive_connections=8))
        return client

    async def stream(self, model: str, messages: list[dict], options: dict) -> AsyncIterator[Answer]:
        """Yield the growing answer after each piece; the last one has `done` (or `error`) set."""
        answer = Answer(model)
        payload = {"model": model, "messages": messages, "stream": True, "options": options, "truncate": False}
        try:
            async with self._client().stream("POST", "/api/chat", json=payload) as resp:
                if resp.status_code != 200:
                    body = (await resp.aread()).decode("utf-8", "replace")
                    answer.error = _error_sentence(model, self.base_url, resp.status_code, body)
                    yield answer
                    return
                async for line in resp.aiter_lines():
                    if not line.strip():
                        continue
                    item = json.loads(line)
                    if "error" in item:
                        answer.error = _error_sentence(model, self.base_url, 500, json.dumps(item))
                        yield answer
                        return
                    piece = (item.get("message") or {}).get("content", "")
                    if piece and answer.first_token_s is None:
                        answer.first_token_s = time.monotonic() - answer.started
                    answer.text += piece
                    if item.get("done"):
                        answer.done = True
                        answer.stats = figures(item)
                    yield answer
                    if answer.done:
                        return
        except httpx.TransportError as exc:
            answer.error = (f"Ollama at {self.base_url} is not reachable ({type(exc).__name__})." if not answer.text
                            else f"Ollama at {self.base_url} stopped answering mid-stream ({type(exc).__name__}).")
            yield answer
            return
        if not answer.done:
            answer.error = "Ollama ended the answer without saying why (it may have aborted a repeating token)."
            yield answer

    async def close(self) -> None:
        for client in self._clients.values():
            await client.aclose()


async def coalesce(answers: AsyncIterator[Answer], interval_s: float) -> AsyncIterator[Answer]:
    """The answer's newest state at most once per `interval_s` (the first piece at once).

    A model slower than one token per interval still streams token by token; a faster one sends
    the tokens of each interval together, so the client is not flooded with one update per token
    (each costs Gradio and the client about a millisecond). Closing this generator cancels the
    request."""
    latest: list[Answer] = []
    ready = asyncio.Event()
    finished = False

    async def pump() -> None:
        nonlocal finished
        try:
            async for answer in answers:
                latest[:] = [replace(answer)]  # a snapshot: the stream keeps growing the same object
                ready.set()
        finally:
            finished = True
            ready.set()

    task = asyncio.create_task(pump())
    last = 0.0
    try:
        while True:
            await ready.wait()
            wait = last + interval_s - time.monotonic()
            if wait > 0 and not finished:
                await asyncio.sleep(wait)
            ready.clear()
            if latest:
                answer = latest.pop()
                last = time.monotonic()
                yield answer
                if answer.done or answer.error:
                    break
            elif finished:
                break
        await task  # the stream's own exception, if it had one
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def figures(final: dict) -> dict:
    """The final chunk's counters in words a user reads: tokens/s, prompt tokens, why it stopped."""
    eval_ns = final.get("eval_duration") or 0
    count = final.get("eval_count") or 0
    return {"done_reason": final.get("done_reason"), "prompt_tokens": final.get("prompt_eval_count"),
            "eval_tokens": count, "tokens_per_s": round(count / eval_ns * 1e9, 2) if eval_ns else None,
            "stopped_on_its_own": final.get("done_reason") == "stop"}


def validate_models(models: object, limit: int = 4) -> list[str]:
    if isinstance(models, str):
        models = [models]
    if not isinstance(models, list) or not models:
        raise InvalidInput("Pick at least one Ollama model.")
    if len(models) > limit:
        raise InvalidInput(f"Pick at most {limit} models side by side.")
    return [validate_ollama_name(m) for m in models]
