"""Ollama stand-in for tests: the documented HTTP API, checking the real bytes it receives.

No Ollama server can be installed on the test machine. This one speaks the same protocol
(blobs with digest check, create with NDJSON progress and mid-stream errors, tags, show,
delete, chat), parses every uploaded GGUF header, refuses a file that is not GGUF, and
really runs the uploaded model with llama.cpp (llama_cpp.Llama) for chat, rendering the
model's Go template for the prompt. Run it with the tools venv:

    python ollama_server.py --port 11434 --root /tmp/ollama

Test hooks (not Ollama API): GET /_standin/requests (create/chat bodies received),
POST /_standin/fail {"create": "message"} (next create fails mid-stream),
POST /_standin/fail {"upload_drop_after": N} (next upload drops the connection after N bytes).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import struct
import threading
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

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


# -- a small Go-template renderer (the subset Ollama templates from LLaMA-Factory use) -----------
_TOKEN = re.compile(r"\{\{-?\s*(.*?)\s*-?\}\}", re.S)


def _parse(template: str):
    pos, out = 0, []
    root = {"kind": "root", "body": out}
    node_stack = [root]
    cur = out
    for m in _TOKEN.finditer(template):
        if m.start() > pos:
            cur.append(template[pos:m.start()])
        pos = m.end()
        expr = m.group(1)
        if expr.startswith("if "):
            node = {"kind": "if", "branches": [(expr[3:], [])], "else": None}
            cur.append(node)
            node_stack.append(node)
            cur = node["branches"][0][1]
        elif expr.startswith("else if "):
            node = node_stack[-1]
            node["branches"].append((expr[8:], []))
            cur = node["branches"][-1][1]
        elif expr == "else":
            node = node_stack[-1]
            node["else"] = []
            cur = node["else"]
        elif expr.startswith("range "):
            node = {"kind": "range", "expr": expr[6:], "body": []}
            cur.append(node)
            node_stack.append(node)
            cur = node["body"]
        elif expr == "end":
            node_stack.pop()
            parent = node_stack[-1]
            cur = _tail_body(parent)
        else:
            cur.append({"kind": "expr", "expr": expr})
    cur.append(template[pos:])
    return out


def _tail_body(node):
    if node["kind"] == "root":
        return node["body"]
    if node["kind"] == "range":
        return node["body"]
    return node["else"] if node["else"] is not None else node["branches"][-1][1]


def _value(expr: str, ctx: dict):
    expr = expr.strip()
    if expr.startswith('"') and expr.endswith('"'):
        return expr[1:-1]
    if expr.startswith("eq "):
        a, b = re.findall(r'"[^"]*"|\S+', expr[3:])[:2]
        return _value(a, ctx) == _value(b, ctx)
    if expr.startswith("."):
        return ctx.get(expr[1:], "")
    raise ValueError(f"unsupported template expression {expr!r}")


def _render(nodes, ctx: dict) -> str:
    out = []
    for n in nodes:
        if isinstance(n, str):
            out.append(n)
        elif n["kind"] == "expr":
            out.append(str(_value(n["expr"], ctx)))
        elif n["kind"] == "if":
            for cond, body in n["branches"]:
                if _value(cond, ctx):
                    out.append(_render(body, ctx))
                    break
            else:
                if n["else"] is not None:
                    out.append(_render(n["else"], ctx))
        elif n["kind"] == "range":
            for item in _value(n["expr"], ctx) or []:
                out.append(_render(n["body"], {**ctx, **{k.capitalize(): v for k, v in item.items()}}))
    return "".join(out)


def render_template(template: str, system: str, messages: list[dict]) -> str:
    prompt = messages[-1]["content"] if messages else ""
    ctx = {"System": system, "Messages": messages, "Prompt": prompt, "Response": ""}
    return _render(_parse(template), ctx)


# -- server state ---------------------------------------------------------------------------------
class State:
    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "blobs").mkdir(parents=True, exist_ok=True)
        self.models: dict[str, dict] = {}
        self.requests: list[dict] = []
        self.fail: dict = {}
        self.lock = threading.Lock()
        self._llms: dict[str, object] = {}

    def blob(self, digest: str) -> Path:
        return self.root / "blobs" / digest.replace(":", "-")

    def llm(self, digest: str):
        from llama_cpp import Llama

        if digest not in self._llms:
            self._llms[digest] = Llama(model_path=str(self.blob(digest)), n_ctx=512, verbose=False, seed=0)
        return self._llms[digest]


def full_name(name: str) -> str:
    return name if ":" in name.rsplit("/", 1)[-1] else name + ":latest"


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
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _stream_end(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

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
            return self._json(200, {"version": "0.12.0-standin"})
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
                _parse(body["template"])  # refuse a template we cannot render
                self._chunk({"status": "using template"})
            self._chunk({"status": "writing manifest"})
            size = st.blob(digest).stat().st_size
            now = datetime.now(timezone.utc).isoformat()
            tag = {"name": full_name(name), "model": full_name(name), "modified_at": now, "size": size,
                   "digest": hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest(),
                   "details": {"format": "gguf", "family": meta.get("general.architecture", ""),
                               "parameter_size": "", "quantization_level": quant}}
            param_text = "\n".join(f"{k} {json.dumps(v) if isinstance(v, str) else v}" for k, vs in params.items()
                                   for v in (vs if isinstance(vs, list) else [vs]))
            show = {"template": body.get("template", ""), "system": body.get("system", ""),
                    "parameters": param_text, "details": tag["details"],
                    "model_info": {k: v for k, v in meta.items() if isinstance(v, (int, float, str))}}
            with st.lock:
                st.models[full_name(name)] = {"tag": tag, "show": show, "digest": digest, "body": body}
            self._chunk({"status": "success"})
        except (ValueError, OSError, struct.error) as exc:
            self._chunk({"error": str(exc)})
        self._stream_end()

    def _chat(self, body: dict) -> None:
        st = self.state
        name = full_name(body.get("model") or "")
        with st.lock:
            model = st.models.get(name)
        if model is None:
            return self._json(404, {"error": f"model '{name}' not found"})
        spec = model["body"]
        messages = [m for m in body.get("messages") or [] if m.get("role") != "system"]
        system = next((m["content"] for m in body.get("messages") or [] if m.get("role") == "system"),
                      spec.get("system", ""))
        template = spec.get("template") or "{{ .Prompt }}"
        prompt = render_template(template, system, messages)
        params = spec.get("parameters") or {}
        options = body.get("options") or {}
        stops = params.get("stop") or []
        with st.lock:
            st.requests.append({"path": "/api/chat", "body": body, "prompt": prompt})
            llm = st.llm(model["digest"])
            out = llm.create_completion(prompt, max_tokens=int(options.get("num_predict", 32)), stop=stops,
                                        temperature=0.0, seed=0)
        choice = out["choices"][0]
        done_reason = "stop" if choice["finish_reason"] == "stop" else "length"
        created = datetime.now(timezone.utc).isoformat()
        if body.get("stream", True):
            self._stream_start()
            self._chunk({"model": name, "created_at": created,
                         "message": {"role": "assistant", "content": choice["text"]}, "done": False})
            self._chunk({"model": name, "created_at": created, "message": {"role": "assistant", "content": ""},
                         "done": True, "done_reason": done_reason,
                         "eval_count": out["usage"]["completion_tokens"]})
            self._stream_end()
        else:
            self._json(200, {"model": name, "created_at": created,
                             "message": {"role": "assistant", "content": choice["text"]}, "done": True,
                             "done_reason": done_reason})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=11434)
    parser.add_argument("--root", type=Path, default=Path("/tmp/ollama-standin"))
    args = parser.parse_args()
    Handler.state = State(args.root)
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    server.daemon_threads = True
    print(f"ollama stand-in listening on {args.host}:{args.port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
