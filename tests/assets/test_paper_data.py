"""p2d-data: converting the shared data layout into LLaMA-Factory alpaca files (offline, tmp dirs only)."""

import hashlib
import json

import pytest

from p2d_llamafactory.assets.paper_data import (
    DIALOGSUM_INSTRUCTION,
    MANIFEST_FILE,
    PaperDataError,
    convert_row,
    hub_entries,
    main,
    write_paper_data,
)
from p2d_llamafactory.experiments.evaluate import evaluate_predictions


GSM8K = {
    "train": [
        {"question": "Tom has 2 apples and buys 3. How many?", "answer": "2 + 3 = 5\n#### 5"},
        {"question": "A box holds 1,000 pens; 1 is lost.", "answer": "1,000 - 1 = 999\n#### 999"},
        {"question": "It is 2 degrees and drops 7.", "answer": "2 - 7 = -5\n#### -5"},
    ],
    "test": [
        {"question": "Half of 5?", "answer": "5 / 2 = 2.5\n#### 2.5"},
        {"question": "3 times 4?", "answer": "#### 12"},
    ],
}
DIALOGSUM = {
    "train": [
        {"id": "dev_0", "dialogue": "#Person1#: Hi.\n#Person2#: Hello.", "summary": "They greet.", "topic": "greet"},
        {"id": "dev_1", "dialogue": "#Person1#: Bye.", "summary": "#Person1# leaves.", "topic": "leave"},
    ],
    "test": [
        {
            "id": "test_0",
            "dialogue": "#Person1#: Tea?\n#Person2#: Yes please.",
            "summary": "#Person1# offers tea.",
            "topic": "tea",
            "references": ["#Person1# offers tea.", "#Person2# accepts tea.", "They drink tea."],
        },
        {
            "id": "test_1",
            "dialogue": "#Person1#: Late again?",
            "summary": "#Person1# is annoyed.",
            "topic": "work",
            "references": ["#Person1# is annoyed.", "#Person2# is late.", "Lateness at work."],
        },
    ],
}
BIOINSTRUCT = {
    "train": [
        {"input": "Medication: Aspirin", "output": "Aspirin thins blood.", "instruction": "Explain the drug."},
        {"input": "", "output": "Wash hands.", "instruction": "Give one hygiene tip."},
    ],
    "test": [{"input": "Term: BP", "output": "Blood pressure.", "instruction": "Expand the abbreviation."}],
}
SOURCES = {"gsm8k": GSM8K, "dialogsum": DIALOGSUM, "bioinstruct": BIOINSTRUCT}
OUTPUT_FILES = [f"p2d_{d}_{s}.json" for d in SOURCES for s in ("train", "test")]


@pytest.fixture
def source(tmp_path):
    """A fake shared data folder with the real layout and field names."""
    root = tmp_path / "shared" / "data"
    for dataset, splits in SOURCES.items():
        (root / dataset).mkdir(parents=True)
        for split, rows in splits.items():
            (root / dataset / f"{split}.json").write_text(json.dumps(rows, indent=1), encoding="utf-8")
    return root


def _load(path):
    return json.loads(path.read_text(encoding="utf-8"))


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


# ---------------------------------------------------------------- conversion


def test_field_mapping(source, tmp_path):
    out = tmp_path / "out"
    assert main(["--source", str(source), "--output-dir", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted([*OUTPUT_FILES, MANIFEST_FILE, "dataset_info.json"])

    gsm = _load(out / "p2d_gsm8k_train.json")
    assert gsm == [{"instruction": r["question"], "input": "", "output": r["answer"]} for r in GSM8K["train"]]
    assert len(_load(out / "p2d_gsm8k_test.json")) == 2

    dialog_train = _load(out / "p2d_dialogsum_train.json")
    assert dialog_train[0] == {
        "id": "dev_0",
        "instruction": DIALOGSUM_INSTRUCTION,
        "input": "#Person1#: Hi.\n#Person2#: Hello.",
        "output": "They greet.",
    }
    dialog_test = _load(out / "p2d_dialogsum_test.json")
    assert [r["references"] for r in dialog_test] == [r["references"] for r in DIALOGSUM["test"]]
    assert [r["id"] for r in dialog_test] == ["test_0", "test_1"]
    assert all("topic" not in r for r in dialog_train + dialog_test)

    bio = _load(out / "p2d_bioinstruct_train.json")
    assert bio == [
        {"instruction": r["instruction"], "input": r["input"], "output": r["output"]} for r in BIOINSTRUCT["train"]
    ]

    info = _load(out / "dataset_info.json")
    assert info == {
        f"{d}_local{'' if s == 'train' else '_test'}": {"file_name": f"p2d_{d}_{s}.json"}
        for d in SOURCES
        for s in ("train", "test")
    }


def test_convert_row_errors_name_the_row():
    with pytest.raises(PaperDataError, match=r"f.json, row 3: field 'answer' is missing"):
        convert_row("gsm8k", {"question": "q"}, "f.json, row 3")
    with pytest.raises(PaperDataError, match="field 'summary' is not a string"):
        convert_row("dialogsum", {"dialogue": "d", "summary": 3})
    with pytest.raises(PaperDataError, match="'references' must be a non-empty list"):
        convert_row("dialogsum", {"dialogue": "d", "summary": "s", "references": []})
    with pytest.raises(PaperDataError, match="unknown dataset"):
        convert_row("mmlu", {})
    assert convert_row("bioinstruct", {"instruction": "i", "output": "o"}) == {
        "instruction": "i",
        "input": "",
        "output": "o",
    }


def test_registry_merge_keeps_other_keys(source, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    other = {"p2d_demo": {"file_name": "p2d_demo_train.json"}, "mine": {"file_name": "x.json", "columns": {"a": "b"}}}
    (out / "dataset_info.json").write_text(json.dumps(other))
    assert main(["--source", str(source), "--output-dir", str(out), "--datasets", "gsm8k"]) == 0
    info = _load(out / "dataset_info.json")
    assert list(info) == ["p2d_demo", "mine", "gsm8k_local", "gsm8k_local_test"]
    assert info["mine"] == other["mine"] and info["p2d_demo"] == other["p2d_demo"]
    assert not (out / "p2d_dialogsum_train.json").exists()

    # a later run for another data set adds its entries and keeps gsm8k's (in registry and manifest)
    assert (
        main(["--source", str(source), "--output-dir", str(out), "--datasets", "bioinstruct", "--register-hub"]) == 0
    )
    info = _load(out / "dataset_info.json")
    assert list(info)[:4] == ["p2d_demo", "mine", "gsm8k_local", "gsm8k_local_test"]
    assert {"bioinstruct_local", "bioinstruct_local_test", "gsm8k", "dialogsum", "bioinstruct"} <= set(info)
    assert list(_load(out / MANIFEST_FILE)["datasets"]) == ["gsm8k", "bioinstruct"]


def test_hub_entries_shape_and_registration(tmp_path, capsys):
    entries = hub_entries()
    from llamafactory.data.parser import get_dataset_list

    (tmp_path / "dataset_info.json").write_text(json.dumps(entries))
    attrs = {a.dataset_name: a for a in get_dataset_list(list(entries), str(tmp_path))}  # LLaMA-Factory reads them
    assert {name: a.load_from for name, a in attrs.items()} == {
        "openai/gsm8k": "hf_hub",
        "knkarthick/dialogsum": "hf_hub",
        "bio-nlp-umass/bioinstruct": "hf_hub",
    }
    assert (attrs["openai/gsm8k"].prompt, attrs["openai/gsm8k"].response, attrs["openai/gsm8k"].subset) == (
        "question",
        "answer",
        "main",
    )
    assert (attrs["knkarthick/dialogsum"].prompt, attrs["knkarthick/dialogsum"].response) == ("dialogue", "summary")
    bio = attrs["bio-nlp-umass/bioinstruct"]
    assert (bio.prompt, bio.query, bio.response, bio.split) == ("instruction", "input", "output", "train")
    allowed = {"hf_hub_url", "subset", "split", "columns"}
    columns = {"prompt", "query", "response"}
    assert all(set(e) <= allowed and set(e["columns"]) <= columns for e in entries.values())
    hub_entries()["gsm8k"]["split"] = "test"  # a fresh dict each call
    assert hub_entries()["gsm8k"]["split"] == "train"

    # --hub-only needs no source folder and keeps other keys
    out = tmp_path / "out"
    out.mkdir()
    (out / "dataset_info.json").write_text(json.dumps({"p2d_demo": {"file_name": "p2d_demo_train.json"}}))
    assert main(["--hub-only", "--source", str(tmp_path / "nowhere"), "--output-dir", str(out)]) == 0
    assert _load(out / "dataset_info.json") == {"p2d_demo": {"file_name": "p2d_demo_train.json"}, **entries}
    assert sorted(p.name for p in out.iterdir()) == ["dataset_info.json"]
    assert "registered gsm8k, dialogsum, bioinstruct" in capsys.readouterr().out


def test_manifest_counts_limits_and_hashes(source, tmp_path):
    out = tmp_path / "out"
    assert main(["--source", str(source), "--output-dir", str(out), "--max-train", "2", "--max-test", "1"]) == 0
    manifest = _load(out / MANIFEST_FILE)
    assert manifest["generator"] == "p2d-data"
    assert list(manifest["datasets"]) == list(SOURCES)
    for dataset, splits in SOURCES.items():
        item = manifest["datasets"][dataset]
        assert item["source"] == str((source / dataset).resolve())
        assert item["max_train"] == 2 and item["max_test"] == 1
        for split, limit in (("train", 2), ("test", 1)):
            entry = item[split]
            written = out / entry["file"]
            assert entry["file"] == f"p2d_{dataset}_{split}.json"  # names do not change with the limits
            assert entry["sha256"] == hashlib.sha256(written.read_bytes()).hexdigest()
            src = source / dataset / f"{split}.json"
            assert entry["source_sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
            assert entry["rows"] == len(_load(written)) == min(limit, len(splits[split]))
            assert entry["source_rows"] == len(splits[split])
    # first N rows, in order
    assert [r["instruction"] for r in _load(out / "p2d_gsm8k_train.json")] == [
        r["question"] for r in GSM8K["train"][:2]
    ]


def test_reruns_are_byte_identical(source, tmp_path):
    out = tmp_path / "out"
    argv = ["--source", str(source), "--output-dir", str(out), "--register-hub"]
    assert main(argv) == 0
    first = _snapshot(out)
    assert main(argv) == 0
    assert _snapshot(out) == first
    assert write_paper_data(source, out, register_hub=True) == _load(out / MANIFEST_FILE)
    assert _snapshot(out) == first


# ---------------------------------------------------------------- bad input: clear error, nothing written


def _expect_failure(capsys, out, argv, message):
    before = _snapshot(out) if out.exists() else None
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("p2d-data: error: ") and message in err, err
    assert (_snapshot(out) if out.exists() else None) == before


def test_missing_source(tmp_path, capsys):
    out = tmp_path / "out"
    missing = tmp_path / "nowhere"
    _expect_failure(
        capsys, out, ["--source", str(missing), "--output-dir", str(out)], str(missing / "gsm8k" / "train.json")
    )
    assert not out.exists()


def test_bad_row_writes_nothing(source, tmp_path, capsys):
    rows = BIOINSTRUCT["test"] + [{"instruction": "i", "input": "x"}]
    bad = source / "bioinstruct" / "test.json"
    bad.write_text(json.dumps(rows))
    out = tmp_path / "out"
    out.mkdir()
    (out / "dataset_info.json").write_text('{"keep": {"file_name": "k.json"}}\n')
    _expect_failure(
        capsys, out, ["--source", str(source), "--output-dir", str(out)], f"{bad}, row 1: field 'output' is missing"
    )
    bad.write_text('{"not": "a list"}')
    _expect_failure(capsys, out, ["--source", str(source), "--output-dir", str(out)], f"{bad}: expected a JSON list")


def test_invalid_registry_writes_nothing(source, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "dataset_info.json").write_text("{broken")
    _expect_failure(capsys, out, ["--source", str(source), "--output-dir", str(out)], "is not valid JSON")
    _expect_failure(capsys, out, ["--hub-only", "--output-dir", str(out)], "is not valid JSON")


def test_unknown_dataset_and_bad_limits(source, tmp_path, capsys):
    out = tmp_path / "out"
    _expect_failure(
        capsys, out, ["--source", str(source), "--output-dir", str(out), "--datasets", "gsm8k,mmlu"], "mmlu"
    )
    with pytest.raises(SystemExit):
        main(["--source", str(source), "--max-train", "0"])
    with pytest.raises(PaperDataError, match="max_test must be >= 1"):
        write_paper_data(source, out, max_test=0)
    assert not out.exists()


# ---------------------------------------------------------------- works with p2d-eval --references


def test_dialogsum_test_file_feeds_multi_reference_eval(source, tmp_path):
    out = tmp_path / "out"
    assert main(["--source", str(source), "--output-dir", str(out), "--datasets", "dialogsum"]) == 0
    test_file = out / "p2d_dialogsum_test.json"
    rows = _load(test_file)
    preds = tmp_path / "run" / "generated_predictions.jsonl"
    preds.parent.mkdir()
    preds.write_text(
        "".join(json.dumps({"prompt": "", "predict": r["references"][2], "label": r["output"]}) + "\n" for r in rows)
    )
    assert evaluate_predictions(preds, references=test_file)["score"] == pytest.approx(100.0)
    assert evaluate_predictions(preds)["score"] < 100.0
