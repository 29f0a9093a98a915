"""Each decoder family through the stock ``llamafactory-cli train``: stage I (proxy + W1), stage II (probing restricted
to the selected heads), stage III (head slices), and an artifact that stock peft loads without the plugin."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from p2d_llamafactory.files import HEADS_FILE
from p2d_llamafactory.heads.headset import HeadSet
from tests.helpers.cli import run_cli, train_config, write_yaml
from tests.helpers.references import split_qkv


# Llama and Qwen2 run through the CLI in test_cli.py and test_cli_selection.py
NEW_FAMILIES = ("qwen3", "mistral", "gemma2", "gemma3", "phi3")

# run with `python -S`: site-packages is put on the path by hand, so no .pth file (ours included) is processed
MERGE_WITHOUT_PLUGIN = """
import sys
sys.path.append(sys.argv.pop())
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM
base = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32)
merged = PeftModel.from_pretrained(base, sys.argv[2]).merge_and_unload()
assert 'p2d_llamafactory' not in sys.modules
torch.save({k: v for k, v in merged.state_dict().items() if 'self_attn' in k}, sys.argv[3])
"""


def _changed_rows_and_columns(before: dict, after: dict, config) -> dict[int, set[tuple[str, int]]]:
    """Per layer, the (q|k|v, row) and (o, column) blocks of one head size that differ between two state dicts."""
    d = config.head_dim
    changed: dict[int, set[tuple[str, int]]] = {}
    for layer in range(config.num_hidden_layers):
        prefix = f"model.layers.{layer}.self_attn"
        fused = f"{prefix}.qkv_proj.weight" in before
        names = ("qkv_proj", "o_proj") if fused else ("q_proj", "k_proj", "v_proj", "o_proj")
        old = {n: before[f"{prefix}.{n}.weight"] for n in names}
        new = {n: after[f"{prefix}.{n}.weight"] for n in names}
        for proj, a, b in zip("qkv", split_qkv(old, config), split_qkv(new, config)):
            for block in range(a.shape[0] // d):
                if not torch.equal(a[block * d : (block + 1) * d], b[block * d : (block + 1) * d]):
                    changed.setdefault(layer, set()).add((proj, block))
        a, b = old["o_proj"], new["o_proj"]
        for block in range(a.shape[1] // d):
            if not torch.equal(a[:, block * d : (block + 1) * d], b[:, block * d : (block + 1) * d]):
                changed.setdefault(layer, set()).add(("o", block))
    return changed


@pytest.mark.parametrize("kind", NEW_FAMILIES)
def test_all_three_stages_through_the_cli(kind, tiny_models, tiny_dataset_dir, tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM

    overrides = {
        "p2d_data_selection": "p2d",
        "p2d_data_ratio": 0.5,
        "p2d_icl_scoring": "teacher_forced",
        "p2d_head_modules": "all",
        "max_steps": 2,
        "save_steps": 100,
    }
    config = train_config(tiny_models[kind], tiny_dataset_dir, tmp_path / "out", **overrides)
    log = run_cli("train", str(write_yaml(tmp_path / "run.yaml", config)), cwd=tmp_path)
    out = tmp_path / "out"
    head_set = HeadSet.load(out / HEADS_FILE)
    assert len(head_set.selected) == 3 and head_set.method == "w1"  # 25% of 12 heads
    scores = json.loads((out / "p2d_data_scores.json").read_text())
    heads_by_layer = {}
    for layer, head in head_set.selected:
        heads_by_layer.setdefault(str(layer), []).append(head)
    assert scores["settings"]["heads"] == heads_by_layer  # probing was restricted to the selected heads
    assert scores["num_selected"] == 24 and "Num examples = 24" in log

    # stock peft merges the artifact without the plugin; exactly the selected heads' slices moved
    args = [str(tiny_models[kind]), str(out), str(tmp_path / "merged.pt"), str(Path(torch.__file__).parents[1])]
    subprocess.run([sys.executable, "-S", "-c", MERGE_WITHOUT_PLUGIN, *args], check=True, cwd=tmp_path, timeout=300)
    merged = torch.load(tmp_path / "merged.pt")
    base = AutoModelForCausalLM.from_pretrained(tiny_models[kind], dtype=torch.float32).state_dict()
    model_config = AutoConfig.from_pretrained(tiny_models[kind])
    group = model_config.num_attention_heads // model_config.num_key_value_heads
    expected: dict[int, set[tuple[str, int]]] = {}
    for layer, head in head_set.selected:
        expected.setdefault(layer, set()).update(
            {("q", head), ("o", head), ("k", head // group), ("v", head // group)}
        )
    assert _changed_rows_and_columns(base, merged, model_config) == expected
