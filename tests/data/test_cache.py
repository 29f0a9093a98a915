"""Stage II's checkpoint read back: a line that is not exactly a record of this probing is scored again."""

import json

from p2d_llamafactory.data.cache import ProbeCheckpoint
from p2d_llamafactory.data.probe import PromptResult
from p2d_llamafactory.files import PROGRESS_FILE


SETTINGS = {"p2d_data_selection": "p2d", "model": "tiny", "data": "abc"}


def test_records_of_the_wrong_shape_or_type_are_redone_not_trusted(tmp_path, p2d_log):
    good = {"plan": 0, "demos": [1, 2], "weights": [0.5, 0.25], "query_scores": [1.0], "elapsed": 3.0}
    lines = [
        {"settings": SETTINGS},
        good,
        {"plan": 1, "demos": [3]},  # fields missing
        {**good, "plan": 2, "weights": ["x", 0.1]},  # a text where a number goes
        {**good, "plan": 3, "elapsed": -1.0},
        {**good, "plan": True},
        {**good, "plan": 4, "extra": 1},
    ]
    (tmp_path / PROGRESS_FILE).write_text("\n".join(json.dumps(line) for line in lines) + '\n{"plan": 5, "de')
    done = ProbeCheckpoint(tmp_path, SETTINGS).load()
    assert list(done) == [0] and done[0] == PromptResult(0, [1, 2], [0.5, 0.25], [1.0])
    assert "5 lines of" in p2d_log.text and "scored again" in p2d_log.text  # the cut last line is silently redone
