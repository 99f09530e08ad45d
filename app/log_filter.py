"""Pure helpers for log lines: Docker timestamp parsing, ANSI stripping, substring/regex filters."""

from __future__ import annotations

import re
from datetime import datetime, timezone
from functools import lru_cache
from typing import Callable, NamedTuple

import regex  # the stdlib re cannot stop a search: a pathological pattern would hold the thread for minutes

_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
MAX_FILTER = 500
FILTER_TIMEOUT_S = 0.05  # per line: a regular expression slower than this on one line is refused


class BadFilter(ValueError):
    pass


class SlowFilter(BadFilter):
    """A regular expression that ran past its time budget on a line (catastrophic backtracking)."""


class LogLine(NamedTuple):
    seq: int
    stamp: str          # Docker's RFC 3339 timestamp as sent; parsed only when needed
    service: str
    text: str
    note: bool = False  # TuneDeck's own marker (restart, removal): shown whatever the filter

    @property
    def ts(self) -> float:
        return parse_stamp(self.stamp)

    @property
    def ts_text(self) -> str:
        """Millisecond ISO time for display."""
        if len(self.stamp) < 19:
            return ""
        frac = self.stamp[20:].rstrip("Z") if self.stamp[19:20] == "." else ""
        return self.stamp[:19] + "." + frac[:3].ljust(3, "0") + "Z"


def shown(line: LogLine, matcher: Callable[[str], bool]) -> bool:
    return line.note or matcher(line.text)


def strip_ansi(text: str) -> str:
    """Remove colour/cursor escape codes and other control characters; never show them raw."""
    if text.isprintable():  # the common case, checked in C
        return text
    return _CONTROL.sub("", _ANSI.sub("", text))


@lru_cache(maxsize=4096)
def _second(stamp: str) -> float | None:
    try:
        return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=timezone.utc).timestamp()
    except ValueError:
        return None


def parse_stamp(stamp: str) -> float:
    """Epoch seconds of `2026-11-28T18:00:00.123456789Z` (0.0 when absent); seconds are cached."""
    base = _second(stamp[:19]) if len(stamp) >= 19 else None
    if base is None:
        return 0.0
    frac = stamp[20:].rstrip("Z")[:9] if stamp[19:20] == "." else ""
    return base + (int(frac) / 10 ** len(frac) if frac.isdigit() else 0.0)


def split_stamp(raw: str) -> tuple[str, str]:
    """`2026-11-28T18:00:00.123456789Z text` → (stamp, text); the hot path, so no parsing here."""
    sep = raw.find(" ")
    if sep >= 19 and raw[10:11] == "T" and raw[4:5] == "-":
        return raw[:sep], raw[sep + 1:]
    return "", raw


def make_matcher(pattern: str, use_regex: bool) -> Callable[[str], bool]:
    """A predicate for the filter box; a bad regex raises BadFilter with a readable reason."""
    if not isinstance(pattern, str):
        raise BadFilter("The filter must be text.")
    if len(pattern) > MAX_FILTER:
        raise BadFilter(f"The filter is too long (at most {MAX_FILTER} characters).")
    if "\x00" in pattern:
        raise BadFilter("The filter cannot contain a NUL character.")
    if not pattern:
        return lambda _line: True
    if use_regex:
        try:
            compiled = regex.compile(pattern, regex.IGNORECASE | regex.VERSION0)
        except (regex.error, re.error) as exc:
            raise BadFilter(f"Invalid regular expression {pattern!r}: {exc}.") from None

        def search(line: str) -> bool:
            try:
                return compiled.search(line, timeout=FILTER_TIMEOUT_S) is not None
            except TimeoutError:
                raise SlowFilter(f"The filter is too slow: {pattern!r} took over {FILTER_TIMEOUT_S * 1000:.0f} ms "
                                 "on one log line; simplify the regular expression.") from None

        return search
    needle = pattern.lower()
    return lambda line: needle in line.lower()


def render_lines(lines: list[LogLine], *, timestamps: bool, with_service: bool) -> list[str]:
    """Render a batch; the plain case (one service, no timestamps) costs nothing per line."""
    if not timestamps and not with_service:
        return [line.text for line in lines]
    return [render_line(line, timestamps=timestamps, with_service=with_service) for line in lines]


def render_line(line: LogLine, *, timestamps: bool, with_service: bool) -> str:
    parts = []
    if timestamps and line.ts_text:
        parts.append(line.ts_text)
    if with_service:
        parts.append(f"{line.service:>14} |")
    parts.append(line.text)
    return " ".join(parts)


def filter_lines(lines: list[LogLine], matcher: Callable[[str], bool]) -> list[LogLine]:
    """The lines the filter keeps; run it off the event loop (asyncio.to_thread): it may take a while."""
    return [line for line in lines if shown(line, matcher)]
