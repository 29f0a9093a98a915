"""Head-set files read back: every field validated, refused naming the key (or adapter) and what is wrong."""

import json
import os

import pytest
import torch

from p2d_llamafactory.heads.headset import HeadSet
from p2d_llamafactory.heads.scoring import select_top
from tests.helpers.tiny import TINY_SHAPE


def _written(tmp_path, **changes):
    scores = torch.arange(12, dtype=torch.float64).reshape(3, 4)
    head_set = HeadSet("tiny", TINY_SHAPE, "w1", 0, 0.25, scores.tolist(), select_top(scores, 3))
    path = head_set.save(tmp_path / "p2d_heads.json")
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))
    return path


def test_a_file_a_run_wrote_reads_back(tmp_path):
    assert HeadSet.load(_written(tmp_path)).selected == [(2, 1), (2, 2), (2, 3)]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"settings": "fhi"}, r"`settings` must be a dict; got 'fhi'"),
        ({"timings": [1, 2]}, r"`timings` must be a dict"),
        ({"seed": "42"}, r"`seed` must be a int"),
        ({"ratio": 2.0}, r"`ratio` must be in \[0, 1\]"),
        ({"shape": {"num_layers": 3}}, r"`shape` must give num_layers, num_heads"),
        ({"scores": [[0.0] * 4] * 2}, r"`scores` must be 3 rows of 4 numbers"),
        (
            {"selected": [[0, 0], [2, 2], [2, 3]]},
            r"`selected` is not the top 3 of its own `scores` \(the file was edited\?\)",
        ),
        ({"selected": [[5, 0]], "scores": []}, r"`selected` names heads \[\[5, 0\]\] outside its own shape \(3 x 4\)"),
    ],
)
def test_inconsistent_fields_are_refused_naming_them(tmp_path, changes, message):
    with pytest.raises(ValueError, match=message):
        HeadSet.load(_written(tmp_path, **changes))


def test_non_standard_or_non_text_files_are_refused(tmp_path):
    path = _written(tmp_path)
    path.write_text(path.read_text().replace('"ratio": 0.25', '"ratio": NaN'))
    with pytest.raises(ValueError, match=r"is not valid JSON: NaN is not a number JSON allows"):
        HeadSet.load(path)
    path.write_bytes(b'{"shape": "\xff"}')
    with pytest.raises(ValueError, match=r"is not UTF-8 text"):
        HeadSet.load(path)


def test_pipes_devices_and_links_to_them_are_refused_without_reading(tmp_path):
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match=r"`p2d_heads_file` '.*fifo.json' is a named pipe, not a regular file"):
        HeadSet.load(fifo)  # opening it would wait forever
    link = tmp_path / "zero.json"
    link.symlink_to("/dev/zero")
    with pytest.raises(ValueError, match=r"is a device or socket, not a regular file"):
        HeadSet.load(link)  # reading it would never end
    with pytest.raises(ValueError, match=r"`adapter_name_or_path` '.*' is a named pipe"):
        HeadSet.load(fifo, source="adapter_name_or_path")  # an adapter's own file is named as the adapter's
