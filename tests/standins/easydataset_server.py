"""easy-dataset stand-in: its page on 1717, its SQLite database, and its "Use in LLaMA Factory" export.

easy-dataset's web app cannot run here (its Prisma layer needs engine binaries no registry
serves). This stand-in keeps what TuneDeck relies on, from easy-dataset's own code
(ConardLi/easy-dataset, 1.5.0 to 1.7.3):
- the database `prisma/db.sqlite` with tables `Projects` (id, name, ...) and `Datasets`
  (question, answer, cot, confirmed, ...), as in prisma/schema.prisma;
- `POST /api/projects/{id}/llamaFactory/generate` {systemPrompt, confirmedOnly, includeCOT,
  reasoningLanguage} writing `<local-db>/<id>/` dataset_info.json, alpaca.json, sharegpt.json
  and multilingual-thinking.json exactly as app/api/projects/[projectId]/llamaFactory/generate/
  route.js does (entry names, columns, tags, relative file names, the concatenated
  pretty-printed multilingual file, and `confirmedOnly=false` exporting unconfirmed rows only);
- `POST /api/projects` {name} and `POST /api/projects/{id}/datasets` {question, answer, confirmed}
  to fill it, and `GET /` (a page) and `GET /api/projects`.

Run: python easydataset_server.py --port 1717 --root /app   (root holds local-db/ and prisma/)
"""

from __future__ import annotations

import json
import re
import secrets
import sqlite3
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from httpserve import serve  # noqa: E402

SCHEMA = """
CREATE TABLE IF NOT EXISTS Projects (id TEXT PRIMARY KEY, name TEXT NOT NULL, description TEXT NOT NULL DEFAULT '',
    createAt TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP);
CREATE TABLE IF NOT EXISTS Datasets (id TEXT PRIMARY KEY, projectId TEXT NOT NULL, question TEXT NOT NULL,
    answer TEXT NOT NULL, cot TEXT NOT NULL DEFAULT '', questionLabel TEXT NOT NULL DEFAULT '',
    confirmed INTEGER NOT NULL DEFAULT 0, createAt REAL NOT NULL);
"""
PAGE = ("<!doctype html><html><head><title>Easy Dataset</title></head><body><h1>easy-dataset stand-in</h1>"
        "<p>Projects live in prisma/db.sqlite; exports in local-db/&lt;project&gt;/.</p></body></html>")


class Store:
    def __init__(self, root: Path) -> None:
        self.local_db = root / "local-db"
        self.db_path = root / "prisma" / "db.sqlite"
        self.local_db.mkdir(parents=True, exist_ok=True)
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        self.lock = threading.Lock()
        with self._db() as db:
            db.executescript(SCHEMA)

    def _db(self) -> sqlite3.Connection:
        return sqlite3.connect(self.db_path, timeout=10)

    def create_project(self, name: str) -> str:
        pid = secrets.token_urlsafe(9)[:12].replace("-", "x").replace("_", "y")  # nanoid(12)-like
        with self.lock, self._db() as db:
            db.execute("INSERT INTO Projects (id, name) VALUES (?, ?)", (pid, name))
        (self.local_db / pid).mkdir(parents=True, exist_ok=True)
        return pid

    def add_dataset(self, pid: str, question: str, answer: str, confirmed: bool, cot: str = "") -> None:
        with self.lock, self._db() as db:
            db.execute("INSERT INTO Datasets (id, projectId, question, answer, cot, confirmed, createAt) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?)", (secrets.token_hex(6), pid, question, answer, cot,
                                                        int(confirmed), time.time()))

    def projects(self) -> list[dict]:
        with self._db() as db:
            return [{"id": r[0], "name": r[1]} for r in db.execute("SELECT id, name FROM Projects")]

    def datasets(self, pid: str, confirmed: bool | None) -> list[dict]:
        sql = "SELECT question, answer, cot FROM Datasets WHERE projectId = ?"
        params: list = [pid]
        if confirmed is not None:  # route.js: `...(confirmed !== undefined && { confirmed })`
            sql += " AND confirmed = ?"
            params.append(int(confirmed))
        with self._db() as db:
            rows = db.execute(sql + " ORDER BY createAt DESC", params).fetchall()
        return [{"question": q, "answer": a, "cot": c} for q, a, c in rows]

    def generate(self, pid: str, system_prompt: str = "", confirmed_only: bool = False, include_cot: bool = False,
                 reasoning_language: str = "") -> dict:
        """route.js, step for step: the three data files and dataset_info.json, overwritten each time."""
        folder = self.local_db / pid
        folder.mkdir(parents=True, exist_ok=True)
        rows = self.datasets(pid, bool(confirmed_only))
        config = {
            f"[Easy Dataset] [{pid}] Alpaca": {
                "file_name": "alpaca.json",
                "columns": {"prompt": "instruction", "query": "input", "response": "output", "system": "system"},
            },
            f"[Easy Dataset] [{pid}] ShareGPT": {
                "file_name": "sharegpt.json", "formatting": "sharegpt", "columns": {"messages": "messages"},
                "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                         "assistant_tag": "assistant", "system_tag": "system"},
            },
            f"[Easy Dataset] [{pid}] multilingual-thinking": {
                "file_name": "multilingual-thinking.json", "formatting": "multilingual-thinking",
                "columns": {"messages": "messages"},
                "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                         "assistant_tag": "assistant", "system_tag": "system"},
            },
        }

        def output(r):
            return f"<think>{r['cot']}</think>\n{r['answer']}" if r["cot"] and include_cot else r["answer"]

        alpaca = [{"instruction": r["question"], "input": "", "output": output(r), "system": system_prompt or ""}
                  for r in rows]
        sharegpt = []
        for r in rows:
            messages = ([{"role": "system", "content": system_prompt}] if system_prompt else [])
            messages += [{"role": "user", "content": r["question"]}, {"role": "assistant", "content": output(r)}]
            sharegpt.append({"messages": messages})
        thinking = [{"reasoning_language": reasoning_language or "English", "developer": system_prompt or "",
                     "user": r["question"], "analysis": r["cot"] if include_cot and r["cot"] else None,
                     "final": r["answer"],
                     "messages": [{"content": system_prompt or "", "role": "system", "thinking": None},
                                  {"content": r["question"], "role": "user", "thinking": None},
                                  {"content": r["answer"], "role": "assistant",
                                   "thinking": r["cot"] if include_cot and r["cot"] else None}]} for r in rows]
        (folder / "dataset_info.json").write_text(json.dumps(config, indent=2, ensure_ascii=False))
        (folder / "alpaca.json").write_text(json.dumps(alpaca, indent=2, ensure_ascii=False))
        (folder / "sharegpt.json").write_text(json.dumps(sharegpt, indent=2, ensure_ascii=False))
        (folder / "multilingual-thinking.json").write_text(
            "\n".join(json.dumps(item, indent=2, ensure_ascii=False) for item in thinking))
        return {"success": True, "configPath": str(folder / "dataset_info.json"),
                "files": [{"path": str(folder / "alpaca.json"), "format": "alpaca"},
                          {"path": str(folder / "sharegpt.json"), "format": "sharegpt"},
                          {"path": str(folder / "multilingual-thinking.json"), "format": "multilingual-thinking"}]}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    store: Store

    def log_message(self, *args):
        pass

    def _send(self, code: int, body: bytes, ctype: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _json(self, code: int, obj) -> None:
        self._send(code, json.dumps(obj).encode(), "application/json")

    def _body(self) -> dict:
        n = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(n) or b"{}")

    def do_GET(self):
        if self.path in ("/", "/index.html"):
            return self._send(200, PAGE.encode(), "text/html; charset=utf-8")
        if self.path == "/api/projects":
            return self._json(200, self.store.projects())
        self._json(404, {"error": "not found"})

    def do_POST(self):
        if self.path == "/api/projects":
            return self._json(200, {"id": self.store.create_project(self._body().get("name", "project"))})
        m = re.fullmatch(r"/api/projects/([^/]+)/datasets", self.path)
        if m:
            b = self._body()
            self.store.add_dataset(m.group(1), b["question"], b["answer"], bool(b.get("confirmed")), b.get("cot", ""))
            return self._json(200, {"success": True})
        m = re.fullmatch(r"/api/projects/([^/]+)/llamaFactory/generate", self.path)
        if m:
            b = self._body()
            return self._json(200, self.store.generate(m.group(1), b.get("systemPrompt", ""),
                                                       bool(b.get("confirmedOnly")), bool(b.get("includeCOT")),
                                                       b.get("reasoningLanguage", "")))
        self._json(404, {"error": "not found"})


def next_start_args(argv: list[str]) -> list[str]:
    """The image's command, as compose gives it after the entrypoint's own options (`pnpm exec next start -H
    HOST -p PORT`, as the real image runs Next.js), turned into this server's --host/--port."""
    if "next" not in argv or "start" not in argv:
        return argv
    at = argv.index("next")
    own, cli = argv[:at - (2 if argv[at - 2:at] == ["pnpm", "exec"] else 0)], argv[at + 2:]
    names = {"-H": "--host", "--hostname": "--host", "-p": "--port", "--port": "--port"}
    for flag, value in zip(cli[0::2], cli[1::2]):
        if flag in names:
            own += [names[flag], value]
    return own


def main() -> None:
    sys.argv[1:] = next_start_args(sys.argv[1:])
    serve(Handler, lambda handler, root: setattr(handler, "store", Store(root)), "easy-dataset stand-in", 1717,
          "/app")


if __name__ == "__main__":
    main()
