"""The GPU check's CPU dry run (``scripts/gpu_check.sh --cpu``), so that the script cannot rot between GPU runs."""

import os
import subprocess
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.core


def test_the_gpu_check_dry_run_passes_and_prints_its_table(tmp_path):
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--cpu", "--work-dir", str(tmp_path / "check")],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")},
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    table = result.stdout[result.stdout.index("P2D GPU check (CPU dry run") :]
    for check in (
        "stages I-III via llamafactory-cli, bf16 + sdpa",
        "heads bf16 vs float32 (Jaccard)",
        "selection bf16 vs float32 (Jaccard)",
        "probe throughput (stage II, bf16)",
        "7B attention proxy: measured / estimate",
        "7B step: head slices",
        "7B step: lora",
        "7B step: full",
    ):
        assert check in table, table
    assert "MISMATCH" not in table and table.count("| ok |") == 3
    assert (tmp_path / "check" / "bf16" / "adapter_model.safetensors").is_file()
