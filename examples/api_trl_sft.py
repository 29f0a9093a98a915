"""P2D through the Python API with TRL's SFTTrainer instead of ``llamafactory-cli``.

The three stages on SmolLM2-135M-Instruct and the offline demo data (arithmetic word problems), then the AER:

1. ``api.identify_heads``: the task-sensitive heads (stage I, FHI proxy + W1 scores), on all training examples;
2. ``api.select_data``: the examples P2D keeps (stage II, in-context probing over those heads);
3. ``api.apply_head_adapter``: a PeftModel training only the heads' q rows and o columns (stage III), trained on the
   kept examples by TRL's ``SFTTrainer`` and saved as a standard PEFT LoRA adapter with its ``p2d_heads.json``;
4. ``api.aer``: (selection + training time) / t_FFT, with t_FFT estimated from a few timed full fine-tuning steps.

The output dir gets the files ``llamafactory-cli train`` writes (p2d_heads.json/.png, p2d_data_*.json,
p2d_timings.json, p2d_run.json, p2d_aer.json, the adapter), plus ``example_summary.json``: the mean response loss of
the training subset and of held-out problems, before and after training.

    python examples/api_trl_sft.py                      # SmolLM2 (prepare it once: p2d-prepare), ~10 min on 2 cores
    python examples/api_trl_sft.py --model DIR --tiny   # any small model, a few steps: a smoke test

Runs offline. TRL comes with LLaMA-Factory (``llamafactory==0.9.5`` requires ``trl>=0.18,<=0.24``).
"""

import argparse
import json
import logging
import os
import sys
from pathlib import Path


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = ROOT / "models" / "SmolLM2-135M-Instruct"

# (full run, --tiny): the full run follows yaml_examples/smollm2_p2d_full_pipeline.yaml
SETTINGS = {
    "n_train": (400, 24),
    "n_test": (50, 8),
    "max_length": (256, 256),
    "stage1": (
        dict(p2d_head_ratio=0.1, p2d_fhi_samples=20, p2d_fhi_steps=5, p2d_fhi_lr=1e-4, p2d_seed=42),
        dict(p2d_head_ratio=0.25, p2d_fhi_samples=8, p2d_fhi_steps=2, p2d_fhi_lr=1e-3, p2d_seed=42),
    ),
    "stage2": (
        dict(p2d_data_ratio=0.25, p2d_icl_scoring="teacher_forced"),
        dict(p2d_data_ratio=0.5, p2d_icl_scoring="teacher_forced", p2d_data_ppl_samples=4),
    ),
    "learning_rate": (1e-4, 1e-3),  # LoRA-style rates; the head slices train at 10x (p2d_head_lr_scale)
    "epochs": (2.0, 1.0),
    "max_steps": (-1, 12),
    "batch_size": (4, 4),
    "grad_accum": (2, 1),
    "aer_steps": (3, 1),
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(DEFAULT_MODEL), help="model folder (default: %(default)s)")
    parser.add_argument("--output-dir", default="saves/smollm2-135m/api_trl", help="default: %(default)s")
    parser.add_argument("--tiny", action="store_true", help="small data, few steps: a quick smoke test")
    parser.add_argument("--max-steps", type=int, default=None, help="stop training after this many steps")
    return parser.parse_args(argv)


def mean_response_loss(model, tokenizer, rows, batch_size: int = 8) -> float:
    """Mean NLL of the response tokens of tokenized ``rows`` (labels -100 elsewhere)."""
    import torch
    from transformers import DataCollatorForSeq2Seq

    collate = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100, padding=True, return_tensors="pt")
    device = next(model.parameters()).device
    total, count = 0.0, 0
    training = model.training
    model.eval()
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            batch = {k: v.to(device) for k, v in collate(rows[start : start + batch_size]).items()}
            n = int((batch["labels"][:, 1:] != -100).sum())
            total += float(model(**batch).loss) * n
            count += n
    model.train(training)
    return total / count


def main(argv=None) -> int:
    args = parse_args(argv)
    model_dir = Path(args.model)
    if not (model_dir / "config.json").is_file():
        print(
            f"{model_dir} is not a model folder. Prepare the embedded SmolLM2-135M-Instruct once with `p2d-prepare` "
            "(or `bash scripts/quickstart.sh`), or pass --model DIR.",
            file=sys.stderr,
        )
        return 2
    logging.basicConfig(level=logging.INFO, format="[p2d] %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)

    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq
    from trl import SFTConfig, SFTTrainer

    from p2d_llamafactory import api
    from p2d_llamafactory.assets.demo_data import make_demo_examples

    pick = {key: value[1 if args.tiny else 0] for key, value in SETTINGS.items()}
    max_steps = args.max_steps if args.max_steps is not None else pick["max_steps"]
    out = Path(args.output_dir)
    torch.manual_seed(0)

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    examples = make_demo_examples(pick["n_train"] + pick["n_test"], seed=0)  # alpaca dicts, as p2d-prepare writes
    train, test = examples[: pick["n_train"]], examples[pick["n_train"] :]

    # stage I: the heads, on all training examples
    heads = api.identify_heads(
        model, tokenizer, train, output_dir=out, max_length=pick["max_length"], **pick["stage1"]
    )
    print(f"stage I: {len(heads.selected)} heads selected: {heads.selected}")

    # stage II: the examples, probed with those heads
    selection = api.select_data(
        model, tokenizer, train, heads=heads, output_dir=out, max_length=pick["max_length"], **pick["stage2"]
    )
    subset = [train[i] for i in selection.selected]
    print(f"stage II: {len(subset)} of {len(train)} examples selected")

    rows = api.tokenize_examples(tokenizer, subset, pick["max_length"])
    test_rows = api.tokenize_examples(tokenizer, test, pick["max_length"])
    before = {
        "train": mean_response_loss(model, tokenizer, rows),
        "test": mean_response_loss(model, tokenizer, test_rows),
    }

    # stage III: only the heads' slices train, here with TRL's SFTTrainer
    model = api.apply_head_adapter(model, heads, output_dir=out, learning_rate=pick["learning_rate"])
    config = SFTConfig(
        output_dir=str(out),
        learning_rate=model.p2d_learning_rate,
        num_train_epochs=pick["epochs"],
        max_steps=max_steps,
        per_device_train_batch_size=pick["batch_size"],
        gradient_accumulation_steps=pick["grad_accum"],
        lr_scheduler_type="cosine",
        warmup_steps=0.1,  # a ratio of the steps
        logging_steps=1 if args.tiny else 5,
        save_strategy="no",
        report_to=[],
        bf16=False,
        seed=0,
        max_length=pick["max_length"],
    )
    trainer = SFTTrainer(
        model=model,
        args=config,
        train_dataset=Dataset.from_list(rows),  # tokenized: TRL trains on the response tokens (labels) as given
        processing_class=tokenizer,
        callbacks=[api.timing_callback()],  # training time -> p2d_timings.json, as the CLI records it
    )
    trainer.train()
    trainer.save_model(str(out))  # the PEFT LoRA adapter + p2d_heads.json
    after = {
        "train": mean_response_loss(model, tokenizer, rows),
        "test": mean_response_loss(model, tokenizer, test_rows),
    }

    # AER: t_FFT estimated from timed full fine-tuning steps of a fresh copy of the base model on the full data
    full_rows = api.tokenize_examples(tokenizer, train, pick["max_length"])
    collate = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100, padding=True, return_tensors="pt")
    step_size = pick["batch_size"] * pick["grad_accum"]
    batches = [collate(full_rows[i : i + step_size]) for i in range(0, pick["aer_steps"] * step_size, step_size)]
    t_fft = api.estimate_t_fft(
        AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32),
        batches,
        full_data_tokens=sum(len(row["input_ids"]) for row in full_rows),
        epochs=pick["epochs"],
        learning_rate=pick["learning_rate"],
        p2d_aer_estimate_steps=pick["aer_steps"],
    )
    record = api.aer(out, t_fft=t_fft)

    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    summary = {
        "heads": [list(pair) for pair in heads.selected],
        "selected": selection.selected,
        "learning_rate": model.p2d_learning_rate,
        "steps": trainer.state.global_step,
        "logged_losses": losses,
        "loss_before": before,
        "loss_after": after,
        "aer": record["aer"],
    }
    (out / "example_summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print(f"response loss, training subset: {before['train']:.4f} -> {after['train']:.4f}")
    print(f"response loss, {len(test)} held-out problems: {before['test']:.4f} -> {after['test']:.4f}")
    print(f"AER = {record['aer']:.4f} (t_FFT {record['mode']} at {record['t_fft_seconds']:.1f} s)")
    print(f"adapter and P2D records in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
