"""One login for every route: the check Caddy's `forward_auth` asks before each tool request.

The dashboard's Gradio login keeps its sessions in `app.tokens` (token → user), set as the
cookies `access-token-<cookie_id>` / `access-token-unsecure-<cookie_id>` (gradio/routes.py).
Cookies are per host, not per port, so the same session reaches the tool routes on Caddy's
main port and easy-dataset's own port. `GET /_tunedeck/auth` answers 200 for a live session;
otherwise 302 to the login page (page loads) or 401 (everything else), with no reason given.
Sessions expire after `TUNEDECK_SESSION_HOURS`, for the dashboard and the tools alike.
"""

from __future__ import annotations

import hmac
import logging
import threading
import time
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

AUTH_PATH = "/_tunedeck/auth"
LOGIN_PORT_HEADER = "x-tunedeck-login-port"
log = logging.getLogger(__name__)


class SessionGuard:
    def __init__(self, ttl_s: float, sweep_s: float = 2.0) -> None:
        self.ttl_s = ttl_s
        self.sweep_s = sweep_s
        self._first_seen: dict[str, float] = {}
        self._app = None
        self._stop = threading.Event()
        self._lock = threading.Lock()

    # -- lifecycle -------------------------------------------------------------------------
    def start(self, gradio_app) -> None:
        """Follow the sessions of the launched Gradio app (stamp new ones, expire old ones)."""
        self._app = gradio_app
        threading.Thread(target=self._sweep_loop, name="session-sweeper", daemon=True).start()

    def close(self) -> None:
        self._stop.set()

    def _sweep_loop(self) -> None:
        while not self._stop.wait(self.sweep_s):
            try:
                self.sweep()
            except Exception:  # noqa: BLE001 - logged; the next sweep retries
                log.exception("session sweep failed")

    def sweep(self, now: float | None = None) -> None:
        app = self._app
        if app is None:
            return
        now = time.monotonic() if now is None else now
        tokens = getattr(app, "tokens", {})
        with self._lock:
            for token in list(tokens):
                first = self._first_seen.setdefault(token, now)
                if now - first > self.ttl_s:
                    tokens.pop(token, None)
                    log.info("a dashboard session of %s expired", "a user")
            for token in list(self._first_seen):
                if token not in tokens:
                    del self._first_seen[token]

    # -- the check ---------------------------------------------------------------------------
    def user_of(self, request: Request) -> str | None:
        """The user of the request's session, compared in constant time against every live token."""
        app = request.app
        if getattr(app, "auth", None) is None:
            return "anonymous"  # the dashboard itself has no login (local use): nothing to guard
        cookie_id = getattr(app, "cookie_id", "")
        presented = (request.cookies.get(f"access-token-{cookie_id}")
                     or request.cookies.get(f"access-token-unsecure-{cookie_id}") or "")
        user = None
        now = time.monotonic()
        for token, name in list(getattr(app, "tokens", {}).items()):
            if hmac.compare_digest(token.encode(), presented.encode()):
                with self._lock:
                    first = self._first_seen.setdefault(token, now)
                if now - first <= self.ttl_s:
                    user = name
        return user

    async def endpoint(self, request: Request) -> Response:
        if self.user_of(request):
            return Response(status_code=200, headers={"Cache-Control": "no-store"})
        method = request.headers.get("x-forwarded-method", request.method).upper()
        accept = request.headers.get("accept", "")
        if method in ("GET", "HEAD") and "text/html" in accept:
            return RedirectResponse(login_url(request), status_code=302, headers={"Cache-Control": "no-store"})
        return JSONResponse({"detail": "Not authenticated"}, status_code=401, headers={"Cache-Control": "no-store"})


def login_url(request: Request) -> str:
    """The dashboard (whose page is the login form): `/` on Caddy's main site, an absolute URL from
    easy-dataset's port (Caddy names the main site's public port in a header)."""
    port = request.headers.get(LOGIN_PORT_HEADER, "").strip()
    if not port.isdigit():
        return "/"
    proto = request.headers.get("x-forwarded-proto", "http").split(",")[0].strip()
    host = request.headers.get("x-forwarded-host") or request.headers.get("host") or "localhost"
    hostname = urlsplit(f"//{host.split(',')[0].strip()}").hostname or "localhost"
    if ":" in hostname:
        hostname = f"[{hostname}]"
    return f"{'https' if proto == 'https' else 'http'}://{hostname}:{port}/"
