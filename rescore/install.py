"""Where this copy of rescore lives: a checkout (an editable install) or an installed wheel.

What the package reads at run time (the shipped configs, the demo's data, the built-in prompt sets) lies
inside the package directory, so both kinds of install find it. The git revision that manifests record
is the checkout's, and only when the package sits at the top of a git work tree: a wheel installed into
a virtual environment inside some other repository has no revision of its own.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def install_root() -> Path:
    """The directory that holds the package: the checkout of an editable install, site-packages for a wheel."""
    return PACKAGE_DIR.parent


def git_revision() -> str | None:
    """HEAD of the checkout this package belongs to; None for an installed wheel, or where git is missing."""
    try:
        out = subprocess.run(["git", "rev-parse", "--show-toplevel", "HEAD"], capture_output=True, text=True,
                             timeout=5, cwd=PACKAGE_DIR)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = out.stdout.split("\n")
    if out.returncode != 0 or len(lines) < 2 or not lines[0] or Path(lines[0]).resolve() != install_root():
        return None
    return lines[1].strip() or None
