"""What the ``.pth`` hook costs every Python start in the environment, side by side in one run.

Each configuration starts ``python -X importtime -c ...`` ``--runs`` times, in turn, and reads the cumulative import
time of the hook module from the interpreter's own report (median and max over the runs):

* ``this hook``: ``p2d_llamafactory._autoload`` as the ``.pth`` file runs it (plugin on);
* ``this hook, switched off``: the same with ``P2D_LLAMAFACTORY_DISABLE=1``;
* ``previous hook``: the hook of ``--previous`` (a git revision; default cce69a0, before the lazy rewrite), imported
  from a copy of that revision's package under another name, in the same kind of process.

    python benchmarks/bench_startup.py --runs 30
"""

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]


def hook_microseconds(code: str, module: str, env: dict[str, str]) -> int:
    """The cumulative import time (µs) of ``module`` in a fresh ``python -X importtime -c code``."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True, env=env, check=True
    )
    pattern = re.compile(rf"import time:\s+\d+ \|\s+(\d+) \|\s*{re.escape(module)}$")
    found = [int(m.group(1)) for line in result.stderr.splitlines() if (m := pattern.search(line))]
    if not found:
        raise RuntimeError(f"{module} was not imported: {result.stderr[-500:]}")
    return found[0]


def previous_package(revision: str, folder: Path) -> Path:
    """The package ``__init__`` and hook of ``revision``, as ``p2d_previous`` in ``folder``."""
    package = folder / "p2d_previous"
    package.mkdir()
    for name in ("__init__.py", "_autoload.py"):
        source = subprocess.run(
            ["git", "show", f"{revision}:p2d_llamafactory/{name}"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        (package / name).write_text(source)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--previous", default="cce69a0")
    args = parser.parse_args()
    base = {k: v for k, v in os.environ.items() if k != "P2D_LLAMAFACTORY_DISABLE"}
    with tempfile.TemporaryDirectory() as tmp:
        old = previous_package(args.previous, Path(tmp))
        configs = {
            "this hook": ("pass", "p2d_llamafactory._autoload", base),
            "this hook, switched off": (
                "pass",
                "p2d_llamafactory._autoload",
                {**base, "P2D_LLAMAFACTORY_DISABLE": "1"},
            ),
            f"previous hook ({args.previous})": (
                "import p2d_previous._autoload",
                "p2d_previous._autoload",
                {**base, "PYTHONPATH": str(old)},
            ),
            f"previous hook ({args.previous}), switched off": (
                "import p2d_previous._autoload",
                "p2d_previous._autoload",
                {**base, "PYTHONPATH": str(old), "P2D_LLAMAFACTORY_DISABLE": "1"},
            ),
        }
        samples: dict[str, list[int]] = {name: [] for name in configs}
        for _ in range(args.runs):  # interleaved, so that load on the machine touches every configuration alike
            for name, (code, module, env) in configs.items():
                samples[name].append(hook_microseconds(code, module, env))
    this = statistics.median(samples["this hook"])
    print(f"{'configuration':<44} {'median ms':>10} {'max ms':>8} {'vs this hook':>13}")
    for name, values in samples.items():
        median = statistics.median(values)
        print(f"{name:<44} {median / 1000:>10.2f} {max(values) / 1000:>8.2f} {median / this:>12.1f}x")


if __name__ == "__main__":
    main()
