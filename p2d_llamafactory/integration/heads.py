"""Stage I inside LLaMA-Factory: the run's arguments translated for ``pipeline.find_heads``, shared by both
integration points (data selection and ``init_adapter``)."""

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from ..heads.headset import HeadSet
from ..heads.layout import AttentionLayout
from ..models import load_causal_lm
from ..pipeline import Output, find_heads
from .checks import run_quantization
from .run import P2DRun


logger = logging.getLogger(__name__)


def run_output(run: P2DRun) -> Output:
    """Where the run's stages write: its output dir, written by the process LLaMA-Factory saves from."""
    training_args = run.training_args
    return Output(Path(training_args.output_dir), training_args.should_save, not training_args.disable_tqdm)


def find_run_heads(
    run: P2DRun,
    model: nn.Module | Callable[[], nn.Module],
    examples: Sequence[dict[str, Any]],
    layout: AttentionLayout,
    found_in_this_run: bool = False,
) -> HeadSet:
    """The run's head set (see ``pipeline.find_heads``): under ``torchrun`` the FHI micro-batches are shared by the
    ranks and rank 0 writes the file."""
    return find_heads(
        model,
        examples,
        layout,
        run.finetuning_args,
        run.tokenizer,
        run.model_args.model_name_or_path,
        run.training_args.per_device_train_batch_size,
        run_output(run),
        found_in_this_run,
    )


def whole_model_loader(run: P2DRun) -> Callable[[], nn.Module]:
    """Loads the base model once, on first call, whole on every rank (also under DeepSpeed ZeRO-3, where
    LLaMA-Factory's own model is partitioned over the ranks), in the run's compute dtype, for stages I and II;
    quantized by bitsandbytes as the run's own model is (``quantization_bit``)."""
    cache: dict[str, nn.Module] = {}
    model_args = run.model_args

    def load() -> nn.Module:
        if "model" not in cache:
            dtype = model_args.compute_dtype or "auto"
            path, device = model_args.model_name_or_path, run.training_args.device
            quantization = run_quantization(model_args)  # probed as the run trains it: quantized, if it is
            if quantization is not None:
                logger.info("P2D: stages I and II read the base model quantized to %d bit", quantization.bits)
            cache["model"] = load_causal_lm(path, dtype, device, model_args.trust_remote_code, quantization)
        return cache["model"]

    return load
