"""Where a decrypted model may live: only in memory (tmpfs), which inside a confidential VM is encrypted RAM.

A persistent disk is outside the TEE's protection: plaintext weights written there would outlive the gateway and
be readable by the host. The mount table (``/proc/mounts``) says which filesystem holds a path.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Final

#: Filesystems that keep their data in RAM only.
MEMORY_FILESYSTEMS: Final = frozenset({"tmpfs", "ramfs"})


def _unescape(field: str) -> str:
    """/proc/mounts writes space, tab, newline and backslash in octal (``\\040`` ...)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def filesystem_of(path: str | os.PathLike[str], mounts: str = "/proc/mounts") -> tuple[str, str]:
    """``(mount point, filesystem type)`` of the mount that holds ``path`` (the longest matching mount point;
    the last one mounted wins for the same point)."""
    target = os.path.realpath(path)
    best: tuple[str, str] = ("", "")
    try:
        text = Path(mounts).read_text()
    except OSError as exc:
        raise OSError(f"cannot read the mount table {mounts}: {exc.strerror or exc}") from None
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 3:
            continue
        point, fstype = _unescape(parts[1]), parts[2]
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best[0]):
            best = (point, fstype)
    return best


def is_memory_backed(path: str | os.PathLike[str], mounts: str = "/proc/mounts") -> bool:
    """Whether ``path`` lies on tmpfs or ramfs."""
    return filesystem_of(path, mounts)[1] in MEMORY_FILESYSTEMS
