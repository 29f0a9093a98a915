"""Stage III, sparse head adaptation: head slices as an exact, standard PEFT LoRA adapter."""

from .model import apply_head_slices, count_slice_params, save_head_set_with_adapter


__all__ = ["apply_head_slices", "count_slice_params", "save_head_set_with_adapter"]
