"""The P2D artifact travels whole: every checkpoint of a p2d_heads (lofit) run carries the run's ``p2d_heads.json``
(``p2d_lofit_heads.json``), so any saved adapter can be checked against the base model it is loaded onto."""

import shutil
from pathlib import Path

from transformers import TrainerCallback

from ..files import HEADS_FILE, LOFIT_HEADS_FILE


class HeadsFileCallback(TrainerCallback):
    """Copy the run's head-set files into each ``checkpoint-<step>`` folder the Trainer saves."""

    def on_save(self, args, state, control, **kwargs):
        checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        for name in (HEADS_FILE, LOFIT_HEADS_FILE):
            source = Path(args.output_dir) / name
            if state.is_world_process_zero and source.is_file() and checkpoint.is_dir():
                shutil.copyfile(source, checkpoint / name)
        return control
