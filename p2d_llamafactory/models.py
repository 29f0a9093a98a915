"""The one loader of the models the stages read beside the run's own: the base model for scoring and probing, a
task model (``p2d_task_model``), and the full model whose steps the AER times."""

from typing import Any

import torch
from torch import nn

from .distributed import whole_models


def load_causal_lm(
    path: str, dtype: Any = "auto", device: torch.device | str | None = None, trust_remote_code: bool = False
) -> nn.Module:
    """``path``'s causal LM in ``dtype`` ("auto": the checkpoint's), on ``device``, in eval mode; whole on every rank,
    also under DeepSpeed ZeRO-3 (where the run's own model is partitioned over the ranks)."""
    from transformers import AutoModelForCausalLM

    with whole_models():
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, trust_remote_code=trust_remote_code)
    if device is not None:
        model = model.to(device)
    return model.eval()
