"""Standard-library logging for the app, and a throttle so a loop that keeps failing is heard, not flooded."""

from __future__ import annotations

import logging
import threading
import time

FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def configure(level: str = "info") -> None:
    """Log to stderr (which `docker compose logs` shows); quiet the chatty HTTP libraries."""
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), format=FORMAT, force=True)
    for name in ("httpx", "httpcore", "urllib3", "docker"):
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLogger().level))


class Throttle:
    """Log a repeated failure at most once per `interval` seconds, saying how often it recurred.

    Background loops retry forever; without this they either hide their errors or flood the log.
    """

    def __init__(self, logger: logging.Logger, interval: float = 60.0) -> None:
        self.logger = logger
        self.interval = interval
        self._last: dict[str, float] = {}
        self._repeats: dict[str, int] = {}
        self._lock = threading.Lock()

    def failure(self, key: str, message: str, exc: BaseException | None = None) -> bool:
        """Log `message` (with the traceback of `exc`) unless `key` was logged recently; True if logged."""
        now = time.monotonic()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self.interval:
                self._repeats[key] = self._repeats.get(key, 0) + 1
                return False
            repeats = self._repeats.pop(key, 0)
            self._last[key] = now
        suffix = f" (repeated {repeats} times since the last report)" if repeats else ""
        self.logger.warning("%s%s", message, suffix, exc_info=exc)
        return True

    def recovered(self, key: str, message: str) -> None:
        """Forget `key` and log `message` once, if a failure had been reported."""
        with self._lock:
            had = self._last.pop(key, None) is not None
            self._repeats.pop(key, None)
        if had:
            self.logger.info("%s", message)
