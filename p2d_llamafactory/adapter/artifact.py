"""The P2D artifact travels whole: every checkpoint of a p2d_heads run carries the run's ``p2d_heads.json``, so
any saved adapter can be checked against the base model it is loaded onto."""

import shutil
from pathlib import Path

from transformers import TrainerCallback

from ..heads.headset import HEADS_FILE


class HeadsFileCallback(TrainerCallback):
    """Copy ``<output_dir>/p2d_heads.json`` into each ``checkpoint-<step>`` folder the Trainer saves."""

    def on_save(self, args, state, control, **kwargs):
        source = Path(args.output_dir) / HEADS_FILE
        checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if state.is_world_process_zero and source.is_file() and checkpoint.is_dir():
            shutil.copyfile(source, checkpoint / HEADS_FILE)
        return control
