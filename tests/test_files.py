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


def test_a_model_replaced_in_place_changes_its_fingerprint(tmp_path):
    from p2d_llamafactory.files import model_fingerprint

    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "llama"}')
    (model / "model.safetensors").write_bytes(b"weights")
    first = model_fingerprint(model)
    assert first == model_fingerprint(str(model)) and len(first) == 16
    (model / "README.md").write_text("notes")  # not part of the model's content
    assert model_fingerprint(model) == first
    (model / "model.safetensors").write_bytes(b"other weights")  # retrained in place
    assert model_fingerprint(model) != first
    assert model_fingerprint("HuggingFaceTB/SmolLM2-135M-Instruct") is None  # a hub name: matched by name


def test_identities_compare_fingerprints_where_the_record_has_them():
    from p2d_llamafactory.hparams import identity_differences, same_identity

    now = {"p2d_data_ratio": 0.1, "model": "m", "model_files": "aaa", "data": "d"}
    assert same_identity({**now}, now, "selection")
    assert identity_differences({**now, "model_files": "bbb"}, now, "selection") == ["model_files"]
    legacy = {key: value for key, value in now.items() if key != "model_files"}  # written before fingerprints
    assert same_identity(legacy, now, "selection")
