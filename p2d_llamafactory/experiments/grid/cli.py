"""``p2d-grid``: the command line; writes or checks the YAMLs of the spec."""

import argparse
import sys
from pathlib import Path

from ...io import atomic_write_text
from ..errors import reported
from .render import generate, stale_files
from .spec import GridSpecError, load_spec


DEFAULT_SPEC = "yaml_examples/grid.yaml"
DEFAULT_OUTPUT_DIR = "yaml_examples"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="p2d-grid",
        description="Expand the grid spec into one LLaMA-Factory YAML per cell: "
        "<output-dir>/<model>/<dataset>/<cell>.yaml, and the tuning cells (learning-rate sweeps on a validation "
        "split) into <output-dir>/<model>/<dataset>/tune/<cell>.yaml. Run from the project root.",
    )
    parser.add_argument("--spec", default=DEFAULT_SPEC, help="grid spec (default: %(default)s)")
    parser.add_argument("--output-dir", default=DEFAULT_OUTPUT_DIR, help="where the YAMLs go (default: %(default)s)")
    parser.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 if any file is missing, differs or is stale (for CI)",
    )
    return parser


def _check(problems: list[tuple[str, str]], output_dir: Path, spec: str, count: int) -> int:
    for kind, relative in problems:
        print(f"{kind}: {output_dir / relative}")
    if problems:
        print(
            f"p2d-grid: {len(problems)} file(s) out of date with {spec}; run p2d-grid to regenerate.",
            file=sys.stderr,
        )
        return 1
    print(f"p2d-grid: all {count} files under {output_dir} match {spec}.")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``p2d-grid``; returns the exit code (0 ok, 1 --check found drift, 2 bad spec)."""
    args = _parser().parse_args(argv)
    return reported("p2d-grid", lambda: _grid(args))


def _grid(args: argparse.Namespace) -> int:
    output_dir = Path(args.output_dir)
    try:
        spec = load_spec(args.spec)
        files = generate(spec)
        stale = stale_files(spec, output_dir, files) if output_dir.is_dir() else []
    except GridSpecError as err:
        print(f"p2d-grid: error: {err}", file=sys.stderr)
        return 2

    changed = []
    for relative, text in files.items():
        path = output_dir / relative
        if not path.is_file():
            changed.append(("missing", relative))
        elif path.read_text(encoding="utf-8") != text:
            changed.append(("differs", relative))
    if args.check:
        return _check(changed + [("stale", relative) for relative in stale], output_dir, args.spec, len(files))

    for _, relative in changed:
        atomic_write_text(output_dir / relative, files[relative])
    for relative in stale:
        (output_dir / relative).unlink()
        print(f"removed stale {output_dir / relative}")
    counts: dict[str, int] = {}
    for relative in files:
        group = relative.rsplit("/", 1)[0]  # <model>/<dataset>, or <model>/<dataset>/tune
        counts[group] = counts.get(group, 0) + 1
    for group, count in counts.items():
        print(f"{output_dir / group}: {count} {'tuning cells' if group.endswith('/tune') else 'cells'}")
    print(
        f"p2d-grid: {len(files)} files from {args.spec} ({len(changed)} written, "
        f"{len(files) - len(changed)} unchanged, {len(stale)} stale removed)."
    )
    return 0
