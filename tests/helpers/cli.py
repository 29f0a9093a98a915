"""Subprocesses (the stock ``llamafactory-cli``, a plain ``python -c``), the YAML configs the CLI reads, and
LLaMA-Factory's own parser."""

import os
import subprocess
import sys
from pathlib import Path

import yaml


CLI = str(Path(sys.executable).parent / "llamafactory-cli")


def cli_result(*args: str, cwd: Path, timeout: float = 900, **env: str) -> subprocess.CompletedProcess:
    """``llamafactory-cli *args`` in ``cwd`` with ``env`` added to the environment; the exit status is not checked."""
    return subprocess.run(
        [CLI, *args], cwd=cwd, capture_output=True, text=True, env={**os.environ, **env}, timeout=timeout
    )


def run_cli(*args: str, cwd: Path, **env: str) -> str:
    """``llamafactory-cli *args``, which must succeed; returns its stdout + stderr."""
    result = cli_result(*args, cwd=cwd, **env)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    return log


# torch's CPU backends (gloo, DeepSpeed's) sometimes abort one rank at interpreter exit, after the run has finished and
# saved ("terminate called without an active exception"; seen on ZeRO-3 about 1 run in 4, and once on plain DDP)
TEARDOWN_ABORT = "terminate called without an active exception"


def run_distributed_cli(*args: str, cwd: Path, output_dir: Path, **env: str) -> str:
    """``llamafactory-cli *args`` under torchrun, which must finish: a rank that aborts at interpreter exit after the
    run trained and saved its adapter is judged by its files (``TEARDOWN_ABORT``). Returns stdout + stderr."""
    result = cli_result(*args, cwd=cwd, **env)
    log = result.stdout + result.stderr
    finished = "***** train metrics *****" in log and (Path(output_dir) / "adapter_model.safetensors").is_file()
    assert result.returncode == 0 or (finished and TEARDOWN_ABORT in log), log[-3000:]
    return log


def run_python(code: str, **env: str) -> str:
    """``python -c code`` with ``env`` added to the environment, which must succeed; returns its stripped stdout."""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, **env}, timeout=300
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def train_config(model_dir: Path, dataset_dir: Path, output_dir: Path, **overrides) -> dict:
    """A short ``p2d_heads`` SFT run on ``p2d_demo`` (4 steps, a checkpoint every 2), with ``overrides``."""
    run = {
        "p2d_head_ratio": 0.25,
        "p2d_fhi_samples": 16,
        "p2d_fhi_steps": 2,
        "p2d_fhi_lr": 1e-3,
        "cutoff_len": 128,
        "preprocessing_num_workers": 1,
        "logging_steps": 1,
        "save_steps": 2,
        "per_device_train_batch_size": 4,
        "learning_rate": 1e-3,
        "lr_scheduler_type": "cosine",
        "max_steps": 4,
        "seed": 11,
    }
    return parser_args(model_dir, dataset_dir, output_dir, **{**run, **overrides})


def adapter_config(model_dir: Path, adapter: Path, finetuning_type: str, **overrides) -> dict:
    """Chat / export arguments that load ``adapter`` onto ``model_dir`` (ChatML template), with ``overrides``."""
    return {
        "model_name_or_path": str(model_dir),
        "adapter_name_or_path": str(adapter),
        "finetuning_type": finetuning_type,
        "template": "chatml",
        **overrides,
    }


def resume_run(trained: dict, files: tuple[str, ...], checkpoint: str = "checkpoint-2") -> tuple[str, Path]:
    """Rerun a finished CLI run (``trained``: root, out, config) in a new output dir that holds only its
    ``checkpoint`` and ``files``, as a run killed after that checkpoint would; returns the log and the dir."""
    import shutil

    resumed = trained["root"] / "resumed"
    resumed.mkdir()
    shutil.copytree(trained["out"] / checkpoint, resumed / checkpoint)
    for name in files:
        shutil.copy(trained["out"] / name, resumed / name)
    config = {**trained["config"], "output_dir": str(resumed)}
    return run_cli("train", str(write_yaml(trained["root"] / "resume.yaml", config)), cwd=trained["root"]), resumed


def assert_same_adapters(a: Path, b: Path, atol: float = 1e-6) -> None:
    """The two folders' ``adapter_model.safetensors`` hold the same tensors to ``atol``."""
    import torch
    from safetensors.torch import load_file

    first, second = load_file(a / "adapter_model.safetensors"), load_file(b / "adapter_model.safetensors")
    assert first.keys() == second.keys()
    for key in first:
        torch.testing.assert_close(first[key], second[key], rtol=0, atol=atol, msg=key)


def write_yaml(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def torchrun_env(nproc: int) -> dict[str, str]:
    """What makes ``llamafactory-cli train`` launch ``nproc`` CPU processes through torchrun."""
    return {
        "FORCE_TORCHRUN": "1",
        "NPROC_PER_NODE": str(nproc),
        "DS_ACCELERATOR": "cpu",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",  # torchrun
    }


def parser_args(model_dir: Path, dataset_dir: Path, output_dir: Path, **overrides) -> dict:
    """Minimal SFT arguments for LLaMA-Factory's parser, with ``overrides`` (a ``None`` value drops the key)."""
    args = {
        "model_name_or_path": str(model_dir),
        "stage": "sft",
        "do_train": True,
        "finetuning_type": "p2d_heads",
        "dataset": "p2d_demo",
        "dataset_dir": str(dataset_dir),
        "template": "chatml",
        "output_dir": str(output_dir),
        "report_to": "none",
    }
    args.update(overrides)
    return {k: v for k, v in args.items() if v is not None}


def parse_train_args(args: dict):
    """LLaMA-Factory's stock ``get_train_args`` (the plugin's wrapper included) on a dict."""
    from llamafactory.hparams import get_train_args

    return get_train_args(args)
