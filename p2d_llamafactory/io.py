"""Atomic result files: a reader sees the old file or the complete new one, never half of one."""

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def default_modes() -> tuple[int, int]:
    """(folder mode, file mode) that plain ``mkdir``/``open`` give under the current umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o777 & ~umask, 0o666 & ~umask


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` on a temporary file next to ``path``, then move it into place.

    The result keeps the permissions of the file it replaces (a new file gets the umask's).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = path.stat().st_mode & 0o777 if path.exists() else default_modes()[1]
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | os.PathLike, data: Any) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)
