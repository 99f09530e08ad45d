"""Ollama stand-in for tests: the documented HTTP API, checking the real bytes it receives.

No Ollama server can be installed on the test machine. This one speaks the same protocol
(blobs with digest check, create with NDJSON progress and mid-stream errors, tags, show,
delete, chat, unload) and keeps its models on disk under --root, as Ollama does under
/root/.ollama, so they survive a restart. It parses every uploaded GGUF header, refuses a
file that is not GGUF, and really runs the uploaded model with llama.cpp for chat:

- the prompt is the model's Go template rendered as Ollama does (system messages joined into
  .System and kept in .Messages; the model's SYSTEM when the request has none);
- it is tokenized as Ollama's llama.cpp runner does (special tokens parsed, BOS added when
  the GGUF says so) and `prompt_eval_count` is that token count (every request is a fresh load);
- tokens stream one by one; generation stops on an end-of-generation token or a stop string
  (done_reason "stop") or at num_predict ("length"); `"truncate": false` with a prompt longer
  than num_ctx is refused with Ollama's 400 message;
- a client that goes away mid-stream ends the generation, and is recorded.

Run it with the tools venv:  python ollama_server.py --port 11434 --root /tmp/ollama

Test hooks (not Ollama API): GET /_standin/requests (create/chat bodies received, prompts,
disconnects), POST /_standin/fail {"create": "message"} (next create fails mid-stream),
POST /_standin/fail {"upload_drop_after": N} (next upload drops the connection after N bytes),
POST /_standin/fail {"token_delay": S} (every generated token takes S seconds more, until set to 0).
It reports the Ollama version the compose file pins (STANDIN_VERSION in its environment overrides it).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import sys
import threading
import time
import urllib.parse
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from httpserve import serve  # noqa: E402

from app.export.gotemplate import TemplateError, parse  # noqa: E402
from app.export.ollama_prompt import chat_prompt  # noqa: E402

FILE_TYPES = {0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K", 11: "Q3_K_S",
              12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K",
              25: "IQ4_NL", 30: "IQ4_XS", 32: "BF16"}
NAME = re.compile(r"(?:[A-Za-z0-9_][A-Za-z0-9_.:-]{0,349}/)?(?:[A-Za-z0-9_][A-Za-z0-9_-]{0,79}/)?"
                  r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,79})?")


# -- GGUF header ------------------------------------------------------------------------------
def read_gguf_header(path: Path) -> dict:
    """Magic, version, counts and the scalar metadata of a GGUF file; raises ValueError if not GGUF."""
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise ValueError("invalid file magic")
        (version,) = struct.unpack("<I", f.read(4))
        if version not in (2, 3):
            raise ValueError(f"unsupported GGUF version {version}")
        n_tensors, n_kv = struct.unpack("<QQ", f.read(16))
        meta = {}

        def read_str() -> str:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > 1 << 24:
                raise ValueError("corrupt GGUF string")
            return f.read(n).decode("utf-8", "replace")

        scalar = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}

        def read_value(vtype: int):
            if vtype in scalar:
                fmt = scalar[vtype]
                return struct.unpack(fmt, f.read(struct.calcsize(fmt)))[0]
            if vtype == 8:
                return read_str()
            if vtype == 9:
                (itype,) = struct.unpack("<I", f.read(4))
                (count,) = struct.unpack("<Q", f.read(8))
                items = [read_value(itype) for _ in range(count)]
                return items if count <= 16 else f"<array of {count}>"
            raise ValueError(f"corrupt GGUF value type {vtype}")

        for _ in range(n_kv):
            key = read_str()
            (vtype,) = struct.unpack("<I", f.read(4))
            meta[key] = read_value(vtype)
    return {"version": version, "tensors": n_tensors, "metadata": meta}


# -- server state ---------------------------------------------------------------------------------
class State:
    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "blobs").mkdir(parents=True, exist_ok=True)
        (root / "models").mkdir(parents=True, exist_ok=True)
        self.models: dict[str, dict] = {}
        for path in sorted((root / "models").glob("*.json")):
            model = json.loads(path.read_text())
            self.models[model["tag"]["name"]] = model
        self.requests: list[dict] = []
        self.fail: dict = {}
        self.lock = threading.Lock()
        self._llms: dict[str, object] = {}
        self._llm_locks: dict[str, threading.Lock] = {}

    def blob(self, digest: str) -> Path:
        return self.root / "blobs" / digest.replace(":", "-")

    def model_file(self, name: str) -> Path:
        return self.root / "models" / (urllib.parse.quote(name, safe="") + ".json")

    def save_model(self, name: str, model: dict) -> None:
        tmp = self.model_file(name).with_suffix(".tmp")
        tmp.write_text(json.dumps(model))
        os.replace(tmp, self.model_file(name))
        self.models[name] = model

    def record(self, entry: dict) -> None:
        with self.lock:
            self.requests.append(entry)

    def llm(self, digest: str, n_ctx: int):
        """(Llama, its lock): one instance per model file, reloaded when num_ctx changes (as Ollama does)."""
        from llama_cpp import Llama

        with self.lock:
            lock = self._llm_locks.setdefault(digest, threading.Lock())
            cached = self._llms.get(digest)
            if cached is None or cached.n_ctx() != n_ctx:
                if cached is not None:
                    cached.close()
                cached = Llama(model_path=str(self.blob(digest)), n_ctx=n_ctx, verbose=False, seed=0,
                               n_threads=int(os.environ.get("STANDIN_THREADS", "2")))
                self._llms[digest] = cached
            return cached, lock

    def unload(self, digest: str) -> None:
        with self.lock:
            llm = self._llms.pop(digest, None)
        if llm is not None:
            llm.close()


def full_name(name: str) -> str:
    return name if ":" in name.rsplit("/", 1)[-1] else name + ":latest"


def _params(spec: dict) -> dict:
    return dict(spec.get("parameters") or {})


class ClientGone(Exception):
    pass


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    state: State

    def log_message(self, fmt, *args):  # quiet
        pass

    # -- helpers --
    def _json(self, code: int, obj) -> None:
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _empty(self, code: int) -> None:
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _body_json(self) -> dict:
        n = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(n) or b"{}")

    def _stream_start(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def _chunk(self, obj) -> None:
        data = (json.dumps(obj) + "\n").encode()
        try:
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise ClientGone() from exc

    def _stream_end(self) -> None:
        try:
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _read(self, size: int):
        while size:
            chunk = self.rfile.read(min(size, 1 << 20))
            if not chunk:
                return
            size -= len(chunk)
            yield chunk

    def _iter_body(self):
        if self.headers.get("Transfer-Encoding", "").lower() != "chunked":
            yield from self._read(int(self.headers.get("Content-Length") or 0))
            return
        while True:
            size = int(self.rfile.readline().strip().split(b";")[0], 16)
            if size == 0:
                self.rfile.readline()
                return
            yield from self._read(size)
            self.rfile.readline()

    # -- routes --
    def do_HEAD(self):
        m = re.fullmatch(r"/api/blobs/(sha256:[0-9a-f]{64})", self.path)
        if not m:
            return self._empty(404)
        self._empty(200 if self.state.blob(m.group(1)).exists() else 404)

    def do_GET(self):
        st = self.state
        if self.path == "/api/version":
            return self._json(200, {"version": os.environ.get("STANDIN_VERSION", "0.32.15")})
        if self.path == "/api/tags":
            with st.lock:
                models = [dict(m["tag"]) for m in st.models.values()]
            return self._json(200, {"models": models})
        if self.path == "/_standin/requests":
            with st.lock:
                return self._json(200, list(st.requests))
        if self.path == "/":
            return self._json(200, {"status": "Ollama is running"})
        self._json(404, {"error": "not found"})

    def do_DELETE(self):
        if self.path != "/api/delete":
            return self._json(404, {"error": "not found"})
        body = self._body_json()
        name = full_name(body.get("model") or body.get("name") or "")
        with self.state.lock:
            if name not in self.state.models:
                return self._json(404, {"error": f"model '{name}' not found"})
            del self.state.models[name]
            self.state.model_file(name).unlink(missing_ok=True)
        self._empty(200)

    def do_POST(self):
        st = self.state
        m = re.fullmatch(r"/api/blobs/(sha256:[0-9a-f]{64})", self.path)
        if m:
            return self._upload(m.group(1))
        if self.path == "/_standin/fail":
            with st.lock:
                st.fail.update(self._body_json())
            return self._json(200, st.fail)
        if self.path == "/api/create":
            return self._create(self._body_json())
        if self.path == "/api/show":
            body = self._body_json()
            name = full_name(body.get("model") or body.get("name") or "")
            with st.lock:
                model = st.models.get(name)
            if model is None:
                return self._json(404, {"error": f"model '{name}' not found"})
            return self._json(200, model["show"])
        if self.path == "/api/chat":
            return self._chat(self._body_json())
        if self.path == "/api/generate":
            return self._generate(self._body_json())
        self._json(404, {"error": "not found"})

    def _upload(self, digest: str) -> None:
        st = self.state
        with st.lock:
            drop_after = st.fail.pop("upload_drop_after", None)
        tmp = st.blob(digest).with_suffix(".partial")
        h = hashlib.sha256()
        received = 0
        with open(tmp, "wb") as f:
            for chunk in self._iter_body():
                h.update(chunk)
                f.write(chunk)
                received += len(chunk)
                if drop_after is not None and received >= drop_after:
                    tmp.unlink()
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
        if "sha256:" + h.hexdigest() != digest:
            tmp.unlink()
            return self._json(400, {"error": "digest mismatch"})
        os.replace(tmp, st.blob(digest))
        self._empty(201)

    def _create(self, body: dict) -> None:
        st = self.state
        with st.lock:
            st.requests.append({"path": "/api/create", "body": body})
            fail = st.fail.pop("create", None)
        name = body.get("model") or ""
        if not NAME.fullmatch(name):
            return self._json(400, {"error": f"invalid model name {name!r}"})
        files = body.get("files") or {}
        if not files:
            return self._json(400, {"error": "neither 'from' or 'files' was specified"})
        self._stream_start()
        self._chunk({"status": "parsing GGUF"})
        try:
            digest = next(iter(files.values()))
            if not st.blob(digest).exists():
                raise ValueError(f"blob {digest} not found: upload it first")
            header = read_gguf_header(st.blob(digest))
            if fail:
                raise ValueError(fail)
            self._chunk({"status": f"using existing layer {digest}"})
            meta = header["metadata"]
            quant = FILE_TYPES.get(meta.get("general.file_type"), str(meta.get("general.file_type")))
            params = body.get("parameters") or {}
            if body.get("template"):
                try:
                    parse(body["template"])  # Ollama refuses a template it cannot parse
                except TemplateError as exc:
                    raise ValueError(f"template error: {exc}") from None
                self._chunk({"status": "using template"})
            self._chunk({"status": "writing manifest"})
            size = st.blob(digest).stat().st_size
            now = datetime.now(timezone.utc).isoformat()
            tag = {"name": full_name(name), "model": full_name(name), "modified_at": now, "size": size,
                   "digest": hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest(),
                   "details": {"format": "gguf", "family": meta.get("general.architecture", ""),
                               "parameter_size": "", "quantization_level": quant}}
            param_text = "\n".join(f"{k:<30} {json.dumps(v) if isinstance(v, str) else v}"
                                   for k, vs in params.items() for v in (vs if isinstance(vs, list) else [vs]))
            show = {"template": body.get("template", ""), "system": body.get("system", ""),
                    "parameters": param_text, "details": tag["details"], "capabilities": ["completion"],
                    "model_info": {k: v for k, v in meta.items() if isinstance(v, (int, float, str))}}
            with st.lock:
                st.save_model(full_name(name), {"tag": tag, "show": show, "digest": digest, "body": body})
            self._chunk({"status": "success"})
        except (ValueError, OSError, struct.error) as exc:
            self._chunk({"error": str(exc)})
        self._stream_end()

    def _generate(self, body: dict) -> None:
        """Only load/unload (empty prompt), which is what TuneDeck uses /api/generate for."""
        name = full_name(body.get("model") or "")
        with self.state.lock:
            model = self.state.models.get(name)
        if model is None:
            return self._json(404, {"error": f"model '{name}' not found"})
        if body.get("prompt"):
            return self._json(400, {"error": "the stand-in only loads and unloads through /api/generate"})
        if body.get("keep_alive") in (0, "0", "0s"):
            self.state.unload(model["digest"])
            reason = "unload"
        else:
            reason = "load"
        self._json(200, {"model": name, "created_at": datetime.now(timezone.utc).isoformat(), "response": "",
                         "done": True, "done_reason": reason})

    def _chat(self, body: dict) -> None:
        st = self.state
        name = full_name(body.get("model") or "")
        with st.lock:
            model = st.models.get(name)
        if model is None:
            return self._json(404, {"error": f"model '{name}' not found"})
        spec = model["body"]
        params = _params(spec)
        options = {**params, **(body.get("options") or {})}
        try:
            prompt = chat_prompt(spec, body.get("messages") or [])
        except TemplateError as exc:
            return self._json(500, {"error": f"template: {exc}"})
        n_ctx = int(options.get("num_ctx") or 4096)
        started = time.monotonic_ns()
        llm, lock = st.llm(model["digest"], n_ctx)
        load_ns = time.monotonic_ns() - started
        tokens = llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=True)
        entry = {"path": "/api/chat", "body": body, "prompt": prompt, "prompt_tokens": len(tokens),
                 "prompt_ids": list(tokens)}
        st.record(entry)
        if len(tokens) >= n_ctx and body.get("truncate") is False:
            return self._json(400, {"error": "the input length exceeds the context length"})
        tokens = tokens[-(n_ctx - 1):]
        stops = [s for s in (options.get("stop") or []) if s]
        num_predict = int(options.get("num_predict", -1))
        limit = min(n_ctx - len(tokens), 10 * n_ctx if num_predict < 0 else num_predict)
        stream = body.get("stream", True)
        created = datetime.now(timezone.utc).isoformat()
        if stream:
            self._stream_start()
        text, count, reason = "", 0, "length"
        import llama_cpp

        vocab = llama_cpp.llama_model_get_vocab(llm.model)
        try:
            with lock:
                if options.get("seed") is not None:
                    llm.set_seed(int(options["seed"]))
                temp = float(options.get("temperature", 0.8))
                eval_start = time.monotonic_ns()
                generated: list[int] = []
                pending = b""
                shown = 0
                if limit > 0:
                    for tok in llm.generate(tokens, temp=temp, top_k=int(options.get("top_k", 40)),
                                            top_p=float(options.get("top_p", 0.9)), min_p=0.0,
                                            repeat_penalty=float(options.get("repeat_penalty", 1.1))):
                        count += 1
                        delay = st.fail.get("token_delay")
                        if delay:
                            time.sleep(float(delay))
                        if llama_cpp.llama_vocab_is_eog(vocab, tok):
                            reason = "stop"
                            break
                        pending += llm.detokenize([tok], prev_tokens=tokens + generated)
                        generated.append(tok)
                        try:
                            text += pending.decode("utf-8")
                            pending = b""
                        except UnicodeDecodeError:
                            if len(pending) >= 4:  # no UTF-8 character is longer: it will never be valid
                                text += pending.decode("utf-8", "replace")
                                pending = b""
                        hit = next((s for s in stops if s in text), None)
                        if hit:
                            text = text[: text.index(hit)]
                            reason = "stop"
                        safe = len(text) if hit else _safe_prefix(text, stops)
                        if stream and safe > shown:
                            self._chunk({"model": name, "created_at": created,
                                         "message": {"role": "assistant", "content": text[shown:safe]},
                                         "done": False})
                            shown = safe
                        if hit or count >= limit:
                            break
                eval_ns = time.monotonic_ns() - eval_start
            final = {"model": name, "created_at": created, "done": True, "done_reason": reason,
                     "total_duration": time.monotonic_ns() - started, "load_duration": load_ns,
                     "prompt_eval_count": len(tokens), "prompt_eval_duration": 1,
                     "eval_count": count, "eval_duration": max(eval_ns, 1)}
            entry.update(done_reason=reason, eval_count=count, reply=text)
            if stream:
                if len(text) > shown:
                    self._chunk({"model": name, "created_at": created,
                                 "message": {"role": "assistant", "content": text[shown:]}, "done": False})
                self._chunk({**final, "message": {"role": "assistant", "content": ""}})
                self._stream_end()
            else:
                self._json(200, {**final, "message": {"role": "assistant", "content": text}})
        except ClientGone:
            entry.update(disconnected=True, eval_count=count)
            st.record({"event": "disconnect", "model": name, "after_tokens": count})
            self.close_connection = True


def _safe_prefix(text: str, stops: list[str]) -> int:
    """How much of `text` can be sent: hold back a tail that could still become a stop string."""
    hold = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:k]):
                hold = max(hold, k)
                break
    return len(text) - hold


def main() -> None:
    serve(Handler, lambda handler, root: setattr(handler, "state", State(root)), "ollama stand-in", 11434,
          "/tmp/ollama-standin")


if __name__ == "__main__":
    main()
