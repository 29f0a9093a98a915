"""Result files and the output dir: standard JSON only, atomic writes, one run per output dir."""

import json
import math
import os
import subprocess
import sys

import pytest

from p2d_llamafactory.io import LOCK_FILE, OutputDirBusy, OutputDirLock, atomic_write_json


def test_result_files_never_hold_non_standard_json(tmp_path):
    with pytest.raises(ValueError):
        atomic_write_json(tmp_path / "x.json", {"score": math.nan})
    assert list(tmp_path.iterdir()) == []


def test_a_second_run_on_the_same_output_dir_fails_at_once_naming_the_holder(tmp_path):
    with OutputDirLock(tmp_path, command="llamafactory-cli train a.yaml"):
        with pytest.raises(OutputDirBusy, match=rf"in use by another run \(pid {os.getpid()} on .*a.yaml"):
            OutputDirLock(tmp_path, command="b").acquire()
    assert not (tmp_path / LOCK_FILE).exists()  # released


def test_a_stale_lock_from_a_killed_run_is_taken_over(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    import socket

    (tmp_path / LOCK_FILE).write_text(
        json.dumps({"pid": int(dead.stdout), "host": socket.gethostname(), "command": "killed"})
    )
    with OutputDirLock(tmp_path, command="new") as lock:
        assert lock.owned and json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
