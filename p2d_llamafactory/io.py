"""Result files: atomic writes (a reader sees the old file or the complete new one, never half of one), the
one figure writer, and the output-directory lock of a run."""

import json
import os
import socket
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
    """Standard JSON only: a NaN or an infinity raises instead of writing ``NaN``/``Infinity``."""
    return atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False, allow_nan=False) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def save_figure(fig: Any, path: str | os.PathLike, dpi: int = 110, **savefig_kwargs: Any) -> Path:
    """Write a matplotlib figure as PNG atomically, then close it (the one figure writer of the project)."""
    import matplotlib.pyplot as plt

    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi, **savefig_kwargs))
    finally:
        plt.close(fig)


def pyplot() -> Any:
    """matplotlib.pyplot on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


LOCK_FILE = ".p2d.lock"


class OutputDirBusy(RuntimeError):
    """Another live run holds the output directory."""


def process_alive(pid: Any) -> bool:
    """Whether process ``pid`` of this host exists (True where that cannot be told)."""
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, OverflowError, TypeError):
        return True
    return True


class OutputDirLock:
    """An exclusive claim on a run's output directory: ``.p2d.lock`` with the holder's pid, host and command.

    A second run fails at once naming the holder; a lock whose process is gone (a killed run on this host) is
    taken over. Use as a context manager; the lock is removed on exit.
    """

    def __init__(self, output_dir: str | os.PathLike, command: str = "") -> None:
        self.path = Path(output_dir) / LOCK_FILE
        self.command = command
        self.owned = False

    def _holder(self) -> dict[str, Any] | None:
        try:
            holder = read_json(self.path)
        except (OSError, ValueError):
            return None  # half-written or gone: treat as stale
        return holder if isinstance(holder, dict) else None

    @staticmethod
    def _alive(holder: dict[str, Any]) -> bool:
        if holder.get("host") != socket.gethostname():
            return True  # cannot tell for another machine: respect it
        return process_alive(holder.get("pid", -1))

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": self.command})
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder is not None and self._alive(holder):
                    raise OutputDirBusy(
                        f"`output_dir` {str(self.path.parent)!r} is in use by another run (pid {holder.get('pid')} on "
                        f"{holder.get('host')}: {holder.get('command') or 'unknown command'}); wait for it or choose "
                        f"another output_dir. If that run is gone, delete {self.path}."
                    ) from None
                self.path.unlink(missing_ok=True)  # stale: its process is gone
                continue
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(record + "\n")
            self.owned = True
            return
        raise OutputDirBusy(f"could not take {self.path}; another run keeps creating it.")

    def release(self) -> None:
        if self.owned:
            holder = self._holder()
            if holder is not None and holder.get("pid") == os.getpid():
                self.path.unlink(missing_ok=True)
            self.owned = False

    def __enter__(self) -> "OutputDirLock":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
