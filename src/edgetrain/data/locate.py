"""Where dataset files are looked for: an explicit directory, ``$EDGETRAIN_DATA``, then a fallback
(the download cache for IDX sets, the project's ``shared/data`` for UEA/UCR ``.ts`` sets).

Both an explicit directory and ``$EDGETRAIN_DATA`` may hold a dataset's files directly or in a
subfolder named after the dataset, so one directory can serve several datasets.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "EDGETRAIN_DATA"


def user_dirs(name: str, data_dir: str | Path | None) -> list[Path]:
    """``data_dir/<name>``, ``data_dir``, then the same two under ``$EDGETRAIN_DATA``.

    The named subfolder comes first so that a directory holding several datasets' files side by
    side in subfolders is never shadowed by stray files at its top level.
    """
    roots = []
    if data_dir is not None:
        roots.append(Path(data_dir).expanduser())
    env = os.environ.get(ENV_VAR)
    if env:
        roots.append(Path(env).expanduser())
    dirs: list[Path] = []
    for root in roots:
        for d in (root / name, root):
            if d not in dirs:
                dirs.append(d)
    return dirs


def cache_dir(name: str) -> Path:
    """``$XDG_CACHE_HOME/edgetrain/<name>``, or ``~/.cache/edgetrain/<name>`` when unset."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "edgetrain" / name


def shared_data_dirs() -> list[Path]:
    """The project's ``shared/data`` folders that exist, for a package living in a checkout at
    ``<root>/src/edgetrain/data/``: ``<root>/../shared/data`` (beside the checkout) and
    ``<root>/shared/data`` (inside it)."""
    parents = Path(__file__).resolve().parents
    if len(parents) < 4:
        return []
    root = parents[3]
    found = []
    for d in (root.parent / "shared" / "data", root / "shared" / "data"):
        if d.is_dir() and d not in found:
            found.append(d)
    return found
