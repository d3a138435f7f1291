"""The one validator and sanitiser for names that reach the filesystem.

Names on disk use ``[a-z0-9_.-]`` and start with a letter or digit (so never ``.``, ``..`` or a hidden file).
A name typed in a config is *checked* (:func:`check_name`: a wrong one is a configuration error); a name read
from somewhere else (a manifest, the results table, an imported file) is *sanitised* (:func:`sanitize`) before it
becomes part of a path. Every path built from a stored string goes through :func:`child`, which refuses any
component that could leave its root, so no stored string can make rescore write outside the directory it writes.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from rescore.errors import ConfigError, StoreError

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")
MAX_LEN = 200  # file names may be 255 bytes; leave room for suffixes such as "@12.arrow" and "-2"
_BAD = re.compile(r"[^a-z0-9_.-]+")


def is_valid(name: object) -> bool:
    """Whether ``name`` may be used on disk as it is."""
    return isinstance(name, str) and len(name) <= MAX_LEN and bool(NAME_RE.match(name)) and ".." not in name


def check_name(name: object, kind: str = "name") -> str:
    """``name`` when it is valid (:func:`is_valid`), else a configuration error naming ``kind``."""
    if not is_valid(name):
        raise ConfigError(
            f"invalid {kind} {name!r}",
            hint="use lowercase letters, digits, '_', '.', '-' and start with a letter or digit",
        )
    return str(name)


def sanitize(text: object, fallback: str = "unnamed") -> str:
    """A valid name made from any string: lowercased, runs of other characters replaced by ``-``, runs of dots
    collapsed, leading and trailing punctuation dropped; ``fallback`` when nothing is left. A valid name is
    returned unchanged. Too long a name keeps its start and gains a hash of the whole, so two long names that
    differ only at the end stay two names."""
    raw = str(text)
    s = re.sub(r"\.{2,}", ".", _BAD.sub("-", raw.lower())).strip("-._") or fallback
    if len(s) > MAX_LEN:
        s = s[: MAX_LEN - 13].rstrip("-._") + "-" + hashlib.sha256(raw.encode("utf-8", "replace")).hexdigest()[:12]
    return s


def check_component(part: object, kind: str = "name") -> str:
    """``part`` when it names one entry of a directory: not empty, not ``.`` or ``..``, no path separator, no NUL."""
    if (not isinstance(part, str) or not part or part in (".", "..") or "/" in part or "\x00" in part
            or (os.sep != "/" and os.sep in part) or (os.altsep is not None and os.altsep in part)):
        raise StoreError(f"refusing the {kind} {part!r} as part of a path: it would point outside its directory",
                         hint="the file it comes from was modified or damaged; names may use [a-z0-9_.-] only")
    return part


def child(root: str | Path, *parts: str, kind: str = "name") -> Path:
    """``root / part / ...`` where every part must name one directory entry (:func:`check_component`), so the
    result is inside ``root`` whatever the parts hold."""
    out = Path(root)
    for p in parts:
        out = out / check_component(p, kind)
    return out


__all__ = ["NAME_RE", "MAX_LEN", "is_valid", "check_name", "sanitize", "check_component", "child"]
