"""Reading what the tools write, as an unprivileged user.

safetensors writes every weights file mode 0600, and the tool containers write as root: a run's adapter,
a merged or full fine-tune, most base models. The app's user (uid 10001) reads them with
CAP_DAC_READ_SEARCH, which lets it read any file and write none. The image gives its Python that
capability as *permitted* only (compose/Dockerfile), compose adds it to the app container (`cap_add`), and
the app raises it here for its own process: a healthcheck or a `docker exec` in the container gets nothing.
"""

from __future__ import annotations

import ctypes
import logging
import os

log = logging.getLogger(__name__)
CAP_DAC_READ_SEARCH = 2
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


class _Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _Data(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def enable() -> bool:
    """Make CAP_DAC_READ_SEARCH effective when it is permitted; True when the app can read any file.
    Call it before any thread starts: capabilities belong to a thread and are inherited by new ones."""
    if os.getuid() == 0:
        return True
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        header, data = _Header(_LINUX_CAPABILITY_VERSION_3, 0), (_Data * 2)()
        if libc.capget(ctypes.byref(header), data) != 0:
            return False
        bit = 1 << CAP_DAC_READ_SEARCH
        if data[0].effective & bit:
            return True
        if not data[0].permitted & bit:
            return False
        data[0].effective |= bit
        return libc.capset(ctypes.byref(header), data) == 0
    except (OSError, AttributeError) as exc:  # no libc capget/capset: not Linux
        log.debug("capabilities unavailable: %s", exc)
        return False
