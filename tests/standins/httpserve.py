"""Shared by the stand-in servers: parse --host/--port/--root and serve a handler class forever."""

from __future__ import annotations

import argparse
from http.server import ThreadingHTTPServer
from pathlib import Path


def serve(handler, attach, name: str, port: int, root: str) -> None:
    """`attach(handler, root)` gives the handler its state; then serve until killed."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=port)
    parser.add_argument("--root", type=Path, default=Path(root))
    args = parser.parse_args()
    attach(handler, args.root)
    server = ThreadingHTTPServer((args.host, args.port), handler)
    server.daemon_threads = True
    print(f"{name} listening on {args.host}:{args.port}", flush=True)
    server.serve_forever()
