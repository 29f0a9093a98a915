"""benchmarks/study_head_budget.py: the head sets it writes and the top-k overlaps it reports."""

import importlib.util
import subprocess
import sys

import pytest

from p2d_llamafactory.heads.headset import HeadSet
from tests.conftest import PROJECT_ROOT


SCRIPT = PROJECT_ROOT / "benchmarks" / "study_head_budget.py"


@pytest.fixture(scope="module")
def study():
    spec = importlib.util.spec_from_file_location("study_head_budget", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _head_set(ranking: list[int], layers: int = 2, heads: int = 4) -> HeadSet:
    """Scores that rank the flat head indices in ``ranking`` first, in that order."""
    flat = [0.0] * (layers * heads)
    for place, index in enumerate(ranking):
        flat[index] = float(len(ranking) - place)
    scores = [flat[layer * heads : (layer + 1) * heads] for layer in range(layers)]
    shape = {"num_layers": layers, "num_heads": heads, "num_kv_heads": heads, "head_dim": 8, "hidden_size": 8 * heads}
    top = [divmod(ranking[0], heads)]
    return HeadSet(model="m", shape=shape, method="w1", seed=0, ratio=0.25, scores=scores, selected=top)


def test_top_k_overlaps_are_the_jaccard_of_each_pair(study):
    sources = {"a": _head_set([0, 1, 2, 3]), "b": _head_set([0, 5, 1, 6]), "c": _head_set([7, 6, 5, 4])}
    rows = {(k, a, b): value for k, a, b, value in study.top_k_overlaps(sources, [1, 2, 4])}
    assert rows[(1, "a", "b")] == 1.0  # both rank head 0 first
    assert rows[(2, "a", "b")] == pytest.approx(1 / 3)  # {0, 1} and {0, 5}
    assert rows[(4, "a", "b")] == pytest.approx(2 / 6)  # {0..3} and {0, 1, 5, 6}
    assert rows[(4, "a", "c")] == 0.0
    assert rows[(4, "b", "c")] == pytest.approx(2 / 6)  # {5, 6} shared
    assert len(rows) == 3 * 3  # every pair once, for every k


def test_overlap_from_the_command_line(tmp_path):
    a = _head_set([0, 1, 2, 3]).save(tmp_path / "a.json")
    b = _head_set([0, 5, 1, 6]).save(tmp_path / "b.json")
    args = [sys.executable, str(SCRIPT), "--ks", "2", "--overlap", f"a={a}", f"b={b}"]
    lines = subprocess.run(args, capture_output=True, text=True, check=True).stdout.splitlines()
    assert lines[1].split() == ["2", "a", "b", "0.33"]
    bad = subprocess.run([*args[:-2], str(a)], capture_output=True, text=True)
    assert bad.returncode != 0 and "name=p2d_heads.json" in bad.stderr
