"""The result-file names and the one reader of result records."""

import os

from p2d_llamafactory.files import read_record


def test_a_record_that_cannot_be_read_is_missing_with_a_warning(tmp_path, p2d_log):
    good = tmp_path / "p2d_eval.json"
    good.write_text('{"score": 0.5}')
    assert read_record(good) == {"score": 0.5}
    assert read_record(tmp_path / "absent.json") is None and not p2d_log.records
    nan = tmp_path / "nan.json"
    nan.write_text('{"score": NaN}')
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    for path in (nan, fifo):
        p2d_log.clear()
        assert read_record(path) is None  # a pipe is not opened: no hang
        assert str(path) in p2d_log.text and "read as missing" in p2d_log.text
