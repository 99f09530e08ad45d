"""Pure helpers for log lines: Docker timestamp parsing, ANSI stripping, substring/regex filters."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable

_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
MAX_FILTER = 500


class BadFilter(ValueError):
    pass


@dataclass(frozen=True)
class LogLine:
    seq: int
    ts: float
    ts_text: str
    service: str
    text: str
    note: bool = False  # TuneDeck's own marker (restart, removal): shown whatever the filter


def shown(line: LogLine, matcher: Callable[[str], bool]) -> bool:
    return line.note or matcher(line.text)


def strip_ansi(text: str) -> str:
    """Remove colour/cursor escape codes and other control characters; never show them raw."""
    return _CONTROL.sub("", _ANSI.sub("", text))


def split_timestamp(raw: str) -> tuple[float, str, str]:
    """`2026-11-28T18:00:00.123456789Z text` → (epoch seconds, ISO text, text)."""
    stamp, sep, text = raw.partition(" ")
    if not sep or len(stamp) < 20 or stamp[4] != "-" or stamp[10] != "T":
        return 0.0, "", raw
    main, _, frac = stamp.rstrip("Z").partition(".")
    try:
        dt = datetime.strptime(main[:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=timezone.utc)
    except ValueError:
        return 0.0, "", raw
    digits = "".join(ch for ch in frac if ch.isdigit())[:9]
    ts = dt.timestamp() + (int(digits.ljust(9, "0")) / 1e9 if digits else 0.0)
    return ts, f"{main[:19]}.{digits[:3].ljust(3, '0')}Z", text


def make_matcher(pattern: str, regex: bool) -> Callable[[str], bool]:
    """A predicate for the filter box; a bad regex raises BadFilter with a readable reason."""
    if not isinstance(pattern, str):
        raise BadFilter("The filter must be text.")
    if len(pattern) > MAX_FILTER:
        raise BadFilter(f"The filter is too long (at most {MAX_FILTER} characters).")
    if "\x00" in pattern:
        raise BadFilter("The filter cannot contain a NUL character.")
    if not pattern:
        return lambda _line: True
    if regex:
        try:
            compiled = re.compile(pattern, re.IGNORECASE)
        except re.error as exc:
            raise BadFilter(f"Invalid regular expression {pattern!r}: {exc}.") from None
        return lambda line: compiled.search(line) is not None
    needle = pattern.lower()
    return lambda line: needle in line.lower()


def render_line(line: LogLine, *, timestamps: bool, with_service: bool) -> str:
    parts = []
    if timestamps and line.ts_text:
        parts.append(line.ts_text)
    if with_service:
        parts.append(f"{line.service:>14} |")
    parts.append(line.text)
    return " ".join(parts)
