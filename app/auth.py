"""Dashboard login from `TUNEDECK_AUTH`: inline `user:password` pairs or a credentials file."""

from __future__ import annotations

import hmac
import secrets
from pathlib import Path
from typing import Callable

from .safe_fs import SafeDir

LOGIN_FILE = "tunedeck-login"
GENERATED_USER = "admin"


class AuthConfigError(ValueError):
    pass


def parse_credentials(spec: str) -> dict[str, str]:
    """`user:pw[,user:pw]` or the path of a file with one `user:password` per line."""
    spec = spec.strip()
    if not spec:
        return {}
    path = Path(spec).expanduser()
    if ":" not in spec or (path.is_file() and ":" not in path.name):
        if not path.is_file():
            raise AuthConfigError("TUNEDECK_AUTH must be `user:password` pairs or the path of a credentials file.")
        entries = [line.strip() for line in path.read_text().splitlines()]
    else:
        entries = [part.strip() for part in spec.split(",")]
    creds: dict[str, str] = {}
    for entry in entries:
        if not entry or entry.startswith("#"):
            continue
        user, sep, password = entry.partition(":")
        if not sep or not user or not password:
            raise AuthConfigError("Each TUNEDECK_AUTH entry must look like `user:password` (both non-empty).")
        creds[user] = password
    return creds


def make_checker(creds: dict[str, str]) -> Callable[[str, str], bool]:
    """A Gradio auth callable that takes the same time whether or not the user exists."""
    items = list(creds.items())

    def check(username: str, password: str) -> bool:
        ok = False
        for user, secret in items:
            user_ok = hmac.compare_digest(user.encode(), (username or "").encode())
            pw_ok = hmac.compare_digest(secret.encode(), (password or "").encode())
            ok |= user_ok & pw_ok
        return ok

    return check


def generated_login(data_dir: Path) -> tuple[dict[str, str], Path, bool]:
    """The login kept in `<data_dir>/tunedeck-login` (mode 0600), created on first use.

    Returns (credentials, file, created). Like Jupyter's token: strong, made once, reused after.
    """
    path = Path(data_dir) / LOGIN_FILE
    if path.is_file():
        creds = parse_credentials(str(path))
        if creds:
            return creds, path, False
    Path(data_dir).mkdir(parents=True, exist_ok=True)
    password = secrets.token_urlsafe(18)
    SafeDir(data_dir).write_text(path, f"# TuneDeck dashboard login, generated on first start (user:password)\n"
                                       f"{GENERATED_USER}:{password}\n", mode=0o600)
    return {GENERATED_USER: password}, path, True
