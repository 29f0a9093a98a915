"""``p2d-sweep``: the command line; runs what is not finished, then writes the report."""

import argparse
import sys
from pathlib import Path

from ..errors import reported
from .claims import DEFAULT_TIMEOUT, Worker
from .runner import CLI_ENV, EVAL_ENV, SweepOutcome, _command, run_sweep
from .runs import SweepError, is_finished, load_runs
from .tables import write_report


DEFAULT_REPORT_DIR = "saves/p2d_sweep_report"  # not a committed folder: a one-cell sweep must not replace a report


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="p2d-sweep",
        description="Run LLaMA-Factory YAMLs that are not finished (p2d_eval.json + p2d_aer.json; tuning runs: "
        "p2d_eval.json), score their predictions with p2d-eval, and write the paper-format tables (mean ± std over "
        "seeds, stability across seeds) and, for tuning runs (output_dir tune__..., or an eval_dataset of *_val "
        "splits), the tuning report. Run from the project root.",
    )
    parser.add_argument("paths", nargs="+", help="run YAMLs, folders (searched recursively) or globs")
    parser.add_argument("--dry-run", action="store_true", help="print what would run; run and write nothing")
    parser.add_argument("--collect-only", action="store_true", help="run nothing; only collect and write the report")
    parser.add_argument("--keep-going", action="store_true", help="after a failed run, go on with the others")
    parser.add_argument(
        "--worker",
        action="store_true",
        help="one of several sweeps sharing this grid (on this machine or on others sharing the output filesystem): "
        "write no report (gather it once with --collect-only). Every sweep claims a cell before running it, skips "
        "cells other live sweeps hold, waits for them, and takes over a cell whose sweep died",
    )
    parser.add_argument(
        "--claim-timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        help="seconds without a heartbeat after which a claim made on another host is stale (default: %(default)s)",
    )
    parser.add_argument(
        "--poll-seconds",
        type=float,
        default=30.0,
        help="how often to look again at cells other sweeps hold (default: %(default)s)",
    )
    parser.add_argument(
        "--report-dir", default=DEFAULT_REPORT_DIR, help="where the report goes (default: %(default)s)"
    )
    parser.add_argument("--rho-d", type=float, default=0.1, help="ρ_D of the main table (default: %(default)s)")
    parser.add_argument("--rho-p", type=float, default=0.1, help="ρ_P of the main table (default: %(default)s)")
    parser.add_argument(
        "--llamafactory-cli",
        help=f"command that replaces llamafactory-cli (default: ${CLI_ENV}, else the llamafactory-cli of this venv)",
    )
    parser.add_argument(
        "--p2d-eval", help=f"command that replaces p2d-eval (default: ${EVAL_ENV}, else the p2d-eval of this venv)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``p2d-sweep``: 0 done, 1 a run failed or could not start, 2 bad input."""
    args = _parser().parse_args(argv)
    return reported("p2d-sweep", lambda: _sweep(args))


def _sweep(args: argparse.Namespace) -> int:
    if args.dry_run and args.collect_only:
        print("p2d-sweep: error: --dry-run and --collect-only exclude each other.", file=sys.stderr)
        return 2
    if args.worker and args.collect_only:
        print("p2d-sweep: error: --worker and --collect-only exclude each other.", file=sys.stderr)
        return 2
    if not args.claim_timeout > 0 or not args.poll_seconds > 0:
        print("p2d-sweep: error: --claim-timeout and --poll-seconds must be > 0.", file=sys.stderr)
        return 2
    try:
        runs, skipped = load_runs(args.paths)
    except SweepError as err:
        print(f"p2d-sweep: error: {err}", file=sys.stderr)
        return 2
    if skipped:
        print(
            f"p2d-sweep: {len(skipped)} YAML(s) without model_name_or_path/output_dir ignored: "
            + ", ".join(str(p) for p in skipped)
        )
    if not runs:
        print("p2d-sweep: error: no run YAML found.", file=sys.stderr)
        return 2

    outcome = SweepOutcome()
    if not args.collect_only:
        outcome = run_sweep(
            runs,
            _command(args.llamafactory_cli, CLI_ENV, "llamafactory-cli"),
            _command(args.p2d_eval, EVAL_ENV, "p2d-eval"),
            args.keep_going,
            args.dry_run,
            Worker(timeout=args.claim_timeout),
            args.poll_seconds,
        )
    if args.dry_run:
        todo = len(runs) - len(outcome.finished_before) - len(outcome.failed) - len(outcome.skipped)
        print(
            f"p2d-sweep: dry run: {len(outcome.finished_before)} finished, {todo} to run, "
            f"{len(outcome.failed) + len(outcome.skipped)} blocked, of {len(runs)}."
        )
        return 1 if outcome.failed else 0

    paths = [] if args.worker else write_report(runs, Path(args.report_dir), args.rho_d, args.rho_p)
    finished = sum(1 for run in runs if is_finished(run))
    print(
        f"p2d-sweep: {len(outcome.trained)} trained, {len(outcome.evaluated)} evaluated only, "
        f"{len(outcome.finished_before)} already finished, {len(outcome.failed)} failed, "
        f"{len(outcome.skipped)} skipped; {finished} of {len(runs)} runs finished. "
        + (
            "Report: " + ", ".join(str(p) for p in paths)
            if paths
            else "No report (--worker): gather it with --collect-only."
        )
    )
    if outcome.failed:
        for run, reason in outcome.failed:
            print(f"p2d-sweep: failed: {run.yaml_path} ({run.output_dir}): {reason}", file=sys.stderr)
        return 1
    return 0
