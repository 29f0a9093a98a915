"""Data selection through the stock ``llamafactory-cli train``, for every method, with any finetuning_type."""

import json

import pytest

from p2d_llamafactory.files import HEADS_FILE
from p2d_llamafactory.heads.headset import HeadSet
from tests.helpers.cli import run_cli, train_config, write_yaml
from tests.helpers.examples import demo_examples


@pytest.fixture(scope="module")
def two_datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("data2")
    examples = demo_examples(70, seed=8)
    (root / "a.json").write_text(json.dumps(examples[:40]))
    (root / "b.json").write_text(json.dumps(examples[40:]))
    (root / "dataset_info.json").write_text(
        json.dumps({"demo_a": {"file_name": "a.json"}, "demo_b": {"file_name": "b.json"}})
    )
    return root


CASES = {
    "p2d with p2d_heads": {"finetuning_type": "p2d_heads", "p2d_data_selection": "p2d"},
    "p2d with lora and a heads file": {"finetuning_type": "lora", "p2d_data_selection": "p2d", "heads_file": True},
    "random with full": {"finetuning_type": "full", "p2d_data_selection": "random", "tokenized_path": True},
    "ifd with freeze": {"finetuning_type": "freeze", "p2d_data_selection": "ifd"},
    "data_whisperer with lora": {"finetuning_type": "lora", "p2d_data_selection": "data_whisperer"},
    "nuggets with lofit": {"finetuning_type": "lofit", "p2d_data_selection": "nuggets", "p2d_nuggets_anchors": 6},
}


CORE = ("p2d with p2d_heads", "p2d with lora and a heads file")  # also run against LLaMA-Factory main


@pytest.mark.parametrize("case", [pytest.param(case, marks=[pytest.mark.core] * (case in CORE)) for case in CASES])
def test_each_selection_method_through_the_cli(case, tiny_models, two_datasets, tmp_path):
    spec = dict(CASES[case])
    overrides = {
        "dataset": "demo_a,demo_b",  # several datasets in one run
        "max_samples": 30,  # per dataset: 60 examples in all
        "val_size": 0.1,  # the eval split is taken before selection: 54 train examples remain
        "p2d_data_ratio": 0.25,
        "p2d_icl_max_new_tokens": 16,
        "p2d_data_ppl_samples": 4,
        "finetuning_type": spec["finetuning_type"],
        "p2d_data_selection": spec["p2d_data_selection"],
        "max_steps": 2,
        "save_steps": 100,
        **{key: value for key, value in spec.items() if key.startswith("p2d_nuggets_")},
    }
    if spec["finetuning_type"] != "p2d_heads":
        for key in ("p2d_head_ratio", "p2d_fhi_samples", "p2d_fhi_steps", "p2d_fhi_lr"):
            overrides[key] = None
    if spec.get("heads_file"):
        HeadSet(
            "tiny",
            {"num_layers": 3, "num_heads": 4, "num_kv_heads": 2, "head_dim": 16, "hidden_size": 64},
            "w1",
            0,
            0.25,
            [],
            [(0, 2), (2, 1), (2, 3)],
        ).save(tmp_path / "heads.json")
        overrides["p2d_heads_file"] = str(tmp_path / "heads.json")
    if spec.get("tokenized_path"):
        overrides["tokenized_path"] = str(tmp_path / "tokenized")
    config = train_config(tiny_models["llama"], two_datasets, tmp_path / "out", **overrides)
    config = {k: v for k, v in config.items() if v is not None}
    log = run_cli("train", str(write_yaml(tmp_path / "run.yaml", config)), cwd=tmp_path)
    out = tmp_path / "out"
    scores = json.loads((out / "p2d_data_scores.json").read_text())
    assert scores["method"] == spec["p2d_data_selection"] and scores["num_examples"] == 54
    assert scores["num_selected"] == 14 == len(scores["selected"])  # 25% of 54, rounded half up
    subset = json.loads((out / "p2d_data_selected.json").read_text())
    assert len(subset) == 14 and subset[0]["conversations"][0]["from"] == "human"
    stats = json.loads((out / "p2d_data_stats.json").read_text())
    assert stats["tokens_selected"]["count"] == 14 and stats["perplexity_all"]["sampled"] == 4
    assert (out / "p2d_data_hist.png").read_bytes()[:4] == b"\x89PNG"
    timings = json.loads((out / "p2d_timings.json").read_text())
    assert timings["data_scoring_seconds"] >= 0
    assert "keeps 14 of 54 training examples" in log
    assert "Num examples = 14" in log  # the trainer sees only the selected subset
    if spec["finetuning_type"] == "p2d_heads":
        assert (out / HEADS_FILE).is_file() and timings["head_identification_seconds"] > 0
        assert log.count("P2D proxy training (FHI)") >= 1 and "reusing the identical head identification" not in log
    if spec.get("heads_file"):
        assert scores["settings"]["heads"] == {"0": [2], "2": [1, 3]}
    if spec["p2d_data_selection"] == "nuggets":  # golden scores: wins out of the 6 anchors, drawn from the pool
        assert len(scores["anchors"]) == 6 and set(scores["anchors"]) <= set(range(54))
        assert all(s is not None and round(s * 6, 6) == int(round(s * 6)) for s in scores["scores"])
        assert "P2D Nuggets (one-shot scoring)" in log
    if spec.get("tokenized_path"):  # saved once the training split is the selected one, in LLaMA-Factory's layout
        from datasets import load_from_disk

        saved = load_from_disk(str(tmp_path / "tokenized"))
        assert saved["train"].num_rows == 14 and saved["validation"].num_rows == 6
        assert "input_ids" in saved["train"].column_names
    if spec["finetuning_type"] == "lofit":  # LoFiT's step 1 runs on the selected subset, as the paper does
        assert json.loads((out / "p2d_lofit_heads.json").read_text())["proxy_loss"] and "LoFiT" in log
