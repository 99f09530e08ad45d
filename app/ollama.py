"""Ollama HTTP API client (blobs, create, tags, show, delete, chat); no Docker, no UI."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable, Iterator

import httpx

CHUNK = 1 << 20


class OllamaError(Exception):
    """Ollama answered with an error (also one sent as `{"error": ...}` inside a 200 stream)."""


class OllamaUnreachable(OllamaError):
    pass


def file_digest(path: Path, on_progress: Callable[[int, int], None] | None = None,
                should_stop: Callable[[], bool] | None = None) -> str:
    """`sha256:<hex>` of a file, read in constant memory."""
    h = hashlib.sha256()
    total = os.path.getsize(path)
    done = 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            done += len(chunk)
            if on_progress:
                on_progress(done, total)
            if should_stop and should_stop():
                raise InterruptedError("cancelled")
    return "sha256:" + h.hexdigest()


class OllamaClient:
    """One connection pool for the app's lifetime (httpx.Client is thread-safe): no new TCP
    connection per call. Long calls (upload, create, chat) pass their own read timeout."""

    def __init__(self, base_url: str, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._timeout = timeout
        self._http = httpx.Client(base_url=self.base_url, timeout=httpx.Timeout(timeout),
                                  limits=httpx.Limits(max_connections=64, max_keepalive_connections=16))

    def close(self) -> None:
        self._http.close()

    def _timeouts(self, read: float | None) -> httpx.Timeout:
        return httpx.Timeout(self._timeout, read=read if read is not None else self._timeout)

    def _request(self, method: str, path: str, **kwargs) -> httpx.Response:
        try:
            return self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise OllamaUnreachable(f"Ollama is not reachable at {self.base_url} ({type(exc).__name__}).") from exc

    @staticmethod
    def _error_of(resp: httpx.Response) -> str:
        try:
            return str(resp.json().get("error") or resp.text)
        except ValueError:
            return resp.text.strip() or f"HTTP {resp.status_code}"

    # -- models -----------------------------------------------------------------------
    def version(self) -> str:
        resp = self._request("GET", "/api/version")
        if resp.status_code != 200:
            raise OllamaError(f"Ollama /api/version answered HTTP {resp.status_code}.")
        return str(resp.json().get("version", "?"))

    def tags(self) -> list[dict]:
        resp = self._request("GET", "/api/tags")
        if resp.status_code != 200:
            raise OllamaError(f"Listing Ollama models failed: {self._error_of(resp)}")
        return list(resp.json().get("models") or [])

    def show(self, model: str) -> dict | None:
        resp = self._request("POST", "/api/show", json={"model": model})
        if resp.status_code == 404:
            return None
        if resp.status_code != 200:
            raise OllamaError(f"Ollama /api/show failed: {self._error_of(resp)}")
        return resp.json()

    def exists(self, model: str) -> bool:
        return self.show(model) is not None

    def delete(self, model: str) -> None:
        resp = self._request("DELETE", "/api/delete", json={"model": model})
        if resp.status_code == 404:
            raise OllamaError(f"Ollama has no model named {model!r}.")
        if resp.status_code != 200:
            raise OllamaError(f"Deleting {model!r} failed: {self._error_of(resp)}")

    # -- blobs ------------------------------------------------------------------------
    def has_blob(self, digest: str) -> bool:
        resp = self._request("HEAD", f"/api/blobs/{digest}")
        return resp.status_code == 200

    def push_blob(self, path: Path, digest: str, on_progress: Callable[[int, int], None] | None = None,
                  should_stop: Callable[[], bool] | None = None) -> None:
        """Stream a file as the request body, 1 MiB at a time: memory stays flat at any size."""
        size = os.path.getsize(path)

        def body() -> Iterator[bytes]:
            sent = 0
            with open(path, "rb") as f:
                while chunk := f.read(CHUNK):
                    if should_stop and should_stop():
                        raise InterruptedError("cancelled")
                    sent += len(chunk)
                    yield chunk
                    if on_progress:
                        on_progress(sent, size)

        try:
            resp = self._http.post(f"/api/blobs/{digest}", content=body(), headers={"Content-Length": str(size)},
                                   timeout=self._timeouts(600))
        except httpx.TransportError as exc:
            raise OllamaUnreachable(
                f"Upload to Ollama at {self.base_url} was interrupted ({type(exc).__name__})."
            ) from exc
        if resp.status_code not in (200, 201):
            raise OllamaError(f"Ollama refused the upload: {self._error_of(resp)}")

    # -- streams ----------------------------------------------------------------------
    def _ndjson(self, path: str, payload: dict, read_timeout: float = 600,
                should_stop: Callable[[], bool] | None = None) -> Iterator[dict]:
        """Yield the JSON lines of a streamed answer; closing the generator closes the request."""
        try:
            with self._http.stream("POST", path, json=payload, timeout=self._timeouts(read_timeout)) as resp:
                if resp.status_code != 200:
                    resp.read()
                    raise OllamaError(f"Ollama {path} failed: {self._error_of(resp)}")
                for line in resp.iter_lines():
                    if should_stop and should_stop():
                        return
                    if not line.strip():
                        continue
                    try:
                        item = json.loads(line)
                    except ValueError:
                        raise OllamaError(f"Ollama {path} sent a line that is not JSON: {line[:200]!r}") from None
                    if "error" in item:
                        raise OllamaError(f"Ollama {path} failed: {item['error']}")
                    yield item
        except httpx.TransportError as exc:
            raise OllamaUnreachable(f"Ollama at {self.base_url} dropped the connection ({type(exc).__name__}).") from exc

    def create(self, payload: dict) -> Iterator[dict]:
        """POST /api/create with `files`; yields status lines, raises on an error line."""
        last = None
        for item in self._ndjson("/api/create", {**payload, "stream": True}):
            last = item
            yield item
        if not last or last.get("status") != "success":
            raise OllamaError("Ollama /api/create ended without reporting success.")

    def chat(self, model: str, messages: list[dict], options: dict | None = None, *, keep_alive=None,
             should_stop: Callable[[], bool] | None = None, read_timeout: float = 600) -> Iterator[dict]:
        """POST /api/chat, streamed: one dict per token piece, the last with `done` and the counters."""
        payload: dict = {"model": model, "messages": messages, "stream": True, "options": dict(options or {})}
        if keep_alive is not None:
            payload["keep_alive"] = keep_alive
        yield from self._ndjson("/api/chat", payload, read_timeout=read_timeout, should_stop=should_stop)

    def unload(self, model: str) -> None:
        """Unload a model (`keep_alive: 0`), so the next request loads it afresh."""
        resp = self._request("POST", "/api/generate", json={"model": model, "keep_alive": 0})
        if resp.status_code not in (200, 404):
            raise OllamaError(f"Unloading {model!r} failed: {self._error_of(resp)}")
