"""LLaMA-Factory's own test suite (v0.9.5: ``tests/`` and ``tests_v1/``) gives the same per-test outcomes with P2D
active as with P2D switched off (``P2D_LLAMAFACTORY_DISABLE=1``).

The suite and its demo data come from the vendored archive ``<repo>/../shared/vendor/llamafactory-v0.9.5-tests.tar.gz``
(the test skips without it). The hub models and data sets it names are replaced by local stand-ins built by
``tests/helpers/lf_standins.py`` (they need the ``llama-models`` package: ``pip install --no-deps llama-models``) and
cached in ``$P2D_LF_STANDINS`` or ``~/.cache/p2d-llamafactory/lf-standins``. The tests that need hub-only models are
deselected, with the reasons, in ``DESELECTED``.

Both runs go in subprocesses, one after the other (about 2 minutes each on 2 CPUs), or side by side with
``P2D_LF_SUITE_PARALLEL=1``. Each run's log, JUnit XML and P2D state stay in the test's tmp dir; the summary is printed
(``-s``).
"""

import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest


REPO = Path(__file__).resolve().parents[2]
ARCHIVE = REPO.parent / "shared" / "vendor" / "llamafactory-v0.9.5-tests.tar.gz"
PLUGIN = REPO / "tests" / "helpers" / "lf_suite_plugin.py"
MIN_PASSED = 100  # of the 131 selected tests, 113 pass with the stand-ins (2 of them xpass); the rest skip or xfail
RUN_TIMEOUT = 1800

_QWEN3 = "the Qwen3-8B tokenizer and chat template are on the hub only"
_MM = "multimodal processor / config of a hub-only model (Qwen2-VL, Llava, InternVL, Pixtral, Qwen-Omni, Gemma-4, ...)"
_V1 = "tests_v1 loads llamafactory/tiny-random-qwen3 (Qwen2 tokenizer, Qwen3 config) or v1 hub data sets"
DESELECTED: dict[str, list[str]] = {  # reason -> node ids (prefixes) relative to the archive's root
    _MM: [
        "tests/data/test_collator.py::test_multimodal_collator",  # also ..._with_packing
        "tests/data/test_mm_plugin.py::test_gemma4_plugin",
        "tests/data/test_mm_plugin.py::test_internvl_plugin",
        "tests/data/test_mm_plugin.py::test_llama4_plugin",
        "tests/data/test_mm_plugin.py::test_llava_plugin",
        "tests/data/test_mm_plugin.py::test_llava_next_plugin",
        "tests/data/test_mm_plugin.py::test_llava_next_video_plugin",
        "tests/data/test_mm_plugin.py::test_pixtral_plugin",
        "tests/data/test_mm_plugin.py::test_qwen2_omni_plugin",
        "tests/data/test_mm_plugin.py::test_qwen2_vl_plugin",
        "tests/data/test_mm_plugin.py::test_qwen3_vl_plugin",  # not ..._video_path: it skips (no demo video)
        "tests/data/test_mm_plugin.py::test_video_llava_plugin",
        "tests/model/model_utils/test_visual.py",
    ],
    _QWEN3: [
        "tests/data/test_template.py::test_reasoning_encode_oneturn",
        "tests/data/test_template.py::test_reasoning_encode_multiturn",  # also ..._discarding_history_cot
        "tests/data/test_template.py::test_qwen3_template",
    ],
    "the Llama-4 tokenizer and chat template are on the hub only": [
        "tests/data/test_template.py::test_llama4_template",
    ],
    "the phi-4 tokenizer and chat template are on the hub only": [
        "tests/data/test_template.py::test_phi4_template",
    ],
    _V1: [
        "tests_v1/core/test_data_engine.py",
        "tests_v1/core/test_model_loader.py",
        "tests_v1/core/utils/test_batching.py::test_normal_batching",
        "tests_v1/core/utils/test_rendering.py::test_chatml_",
        "tests_v1/core/utils/test_rendering.py::test_qwen3_nothink_",
        "tests_v1/core/utils/test_rendering.py::test_process_",
        "tests_v1/plugins/data_plugins/test_converter.py::test_alpaca_converter",
        "tests_v1/plugins/data_plugins/test_converter.py::test_pair_converter",
        "tests_v1/plugins/model_plugins/test_init_plugin.py",
        "tests_v1/plugins/model_plugins/test_kernel_plugin.py",
        "tests_v1/plugins/model_plugins/test_peft.py",
        "tests_v1/plugins/trainer_plugins/distributed/test_fsdp2.py",
    ],
}
# names the suite reads from the environment, and settings that would change what it runs
CLEARED_ENV = (
    "P2D_LLAMAFACTORY_DISABLE",
    "TINY_LLAMA3",
    "TINY_LLAMA4",
    "TINY_LLAMA_ADAPTER",
    "TINY_LLAMA_VALUEHEAD",
    "TINY_DATA",
    "DEMO_DATA",
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "RUN_SLOW",
    "OS_NAME",
    "USE_MODELSCOPE_HUB",
    "USE_OPENMIND_HUB",
    "HF_HOME",
    "HF_HUB_CACHE",
    "HF_DATASETS_CACHE",
    "HUGGINGFACE_HUB_CACHE",
    "TRANSFORMERS_CACHE",
    "PYTEST_ADDOPTS",
    "PYTEST_PLUGINS",
    "PYTHONPATH",
)


def _deselect_args() -> list[str]:
    return [arg for ids in DESELECTED.values() for node in ids for arg in ("--deselect", node)]


@pytest.fixture(scope="module")
def suite_source(tmp_path_factory) -> Path:
    """The archive's suite, extracted, with a ``pytest.ini`` at its root (rootdir and node ids)."""
    if not ARCHIVE.is_file():
        pytest.skip(f"the vendored LLaMA-Factory test suite is not there: {ARCHIVE}")
    root = tmp_path_factory.mktemp("lf-suite")
    with tarfile.open(ARCHIVE) as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(root, filter="data")
        else:  # Python < 3.11.4
            tar.extractall(root)
    (source,) = [p for p in root.iterdir() if (p / "tests" / "conftest.py").is_file()]
    (source / "pytest.ini").write_text("[pytest]\n")
    return source


@pytest.fixture(scope="module")
def standins(suite_source) -> Path:
    pytest.importorskip(
        "llama_models", reason="the stand-ins need Llama-3's BPE ranks: pip install --no-deps llama-models"
    )
    from tests.helpers.lf_standins import build_standins

    default = Path.home() / ".cache" / "p2d-llamafactory" / "lf-standins"
    return build_standins(Path(os.environ.get("P2D_LF_STANDINS", default)), suite_source / "data")


class SuiteRun:
    """One run of the suite in a subprocess: its own working dir (holding the stand-ins' ``llamafactory`` link, the
    suite's ``output/``, its data set cache), JUnit XML, log and P2D state."""

    def __init__(self, name: str, source: Path, standins: Path, root: Path, active: bool) -> None:
        from tests.helpers.lf_standins import hub_cache

        self.name, self.active = name, active
        self.work = root / name
        self.work.mkdir(parents=True)
        os.symlink(standins / "llamafactory", self.work / "llamafactory")
        plugin_dir = self.work / "_plugin"
        plugin_dir.mkdir()
        shutil.copy(PLUGIN, plugin_dir / PLUGIN.name)
        self.junit, self.log, self.state_file = (
            self.work / "junit.xml",
            self.work / "log.txt",
            self.work / "state.json",
        )
        env = {k: v for k, v in os.environ.items() if k not in CLEARED_ENV}
        env.update(
            HF_HUB_OFFLINE="1",
            HF_DATASETS_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
            DISABLE_VERSION_CHECK="1",
            WANDB_DISABLED="true",
            TOKENIZERS_PARALLELISM="false",
            GRADIO_ANALYTICS_ENABLED="False",
            MPLBACKEND="Agg",
            HF_HOME=str(self.work / "hf-home"),
            HF_HUB_CACHE=str(hub_cache(standins)),
            HF_DATASETS_CACHE=str(self.work / "hf-datasets"),
            PYTHONPATH=str(plugin_dir),
            P2D_LF_SUITE_STATE=str(self.state_file),
        )
        env.setdefault("OMP_NUM_THREADS", "1")
        if not active:
            env["P2D_LLAMAFACTORY_DISABLE"] = "1"
        self.env = env
        self.command = [
            sys.executable,
            "-m",
            "pytest",
            "--import-mode=importlib",
            "-p",
            "no:cacheprovider",
            "-p",
            PLUGIN.stem,
            "-c",
            str(source / "pytest.ini"),
            "--rootdir",
            str(source),
            f"--junitxml={self.junit}",
            "-q",
            "-rfE",
            "--durations=15",
            *_deselect_args(),
            str(source / "tests"),
            str(source / "tests_v1"),
        ]

    def start(self) -> None:
        self.started = time.monotonic()
        self._log_handle = open(self.log, "w")
        self.process = subprocess.Popen(
            self.command, cwd=self.work, env=self.env, stdout=self._log_handle, stderr=subprocess.STDOUT
        )

    def wait(self) -> None:
        try:
            self.returncode = self.process.wait(timeout=max(1, RUN_TIMEOUT - (time.monotonic() - self.started)))
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.returncode = self.process.wait()
        self.seconds = time.monotonic() - self.started
        self._log_handle.close()

    def log_tail(self, chars: int = 6000) -> str:
        return self.log.read_text(errors="replace")[-chars:]

    def outcomes(self) -> dict[str, tuple[str, str]]:
        """Test id -> (outcome, message + details); outcome: passed, failed, error, skipped or xfailed."""
        assert self.returncode in (0, 1) and self.junit.is_file(), (
            f"the {self.name} run did not complete (exit status {self.returncode}):\n{self.log_tail()}"
        )
        results: dict[str, tuple[str, str]] = {}
        for case in ET.parse(self.junit).getroot().iter("testcase"):
            test_id = f"{case.get('classname')}::{case.get('name')}"
            outcome, text = "passed", ""
            for child in case:
                if child.tag in ("failure", "error"):
                    outcome = "failed" if child.tag == "failure" else "error"
                    text = f"{child.get('message', '')}\n{child.text or ''}"
                elif child.tag == "skipped":
                    outcome = "xfailed" if child.get("type") == "pytest.xfail" else "skipped"
                    text = child.get("message", "")
            if test_id in results:  # e.g. a failing test with an error in its teardown
                first = results[test_id]
                outcome, text = f"{first[0]}+{outcome}", f"{first[1]}\n{text}"
            results[test_id] = (outcome, text)
        return results

    def p2d_state(self) -> dict:
        return json.loads(self.state_file.read_text())


def run_all(runs: list[SuiteRun], parallel: bool) -> None:
    """Run the suites one after the other, or side by side (about half the wall time on 2 free CPUs)."""
    if parallel:
        for run in runs:
            run.start()
        for run in runs:
            run.wait()
    else:
        for run in runs:
            run.start()
            run.wait()


def _counts(outcomes: dict[str, tuple[str, str]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for outcome, _ in outcomes.values():
        counts[outcome] = counts.get(outcome, 0) + 1
    return dict(sorted(counts.items()))


def test_stock_suite_outcomes_are_the_same_with_p2d_active_and_disabled(suite_source, standins, tmp_path):
    runs = [
        SuiteRun("p2d-disabled", suite_source, standins, tmp_path, active=False),
        SuiteRun("p2d-active", suite_source, standins, tmp_path, active=True),
    ]
    run_all(runs, parallel=os.environ.get("P2D_LF_SUITE_PARALLEL", "") in ("1", "true"))
    disabled, active = runs
    off, on = disabled.outcomes(), active.outcomes()
    for run, outcomes in ((disabled, off), (active, on)):
        state = run.p2d_state()
        print(f"{run.name}: {run.seconds:.0f} s, {_counts(outcomes)}, deselected {len(state['deselected'])}")
        print(f"  P2D active: {state['active']}; wrapped: {', '.join(state['wrapped']) or '-'}")
    bad = ("failed", "error")
    for test_id in sorted(t for t in off if off[t][0] in bad and on.get(t, ("",))[0] in bad):
        print(f"  fails in both runs: {test_id}: {off[test_id][1].strip()[:200]}")

    # each run ran with P2D as intended, in the process that ran the tests
    assert not disabled.p2d_state()["active"] and not disabled.p2d_state()["wrapped"], disabled.p2d_state()
    state = active.p2d_state()
    assert state["active"], state
    for function in ("llamafactory.hparams.parser.get_train_args", "llamafactory.model.adapter.init_adapter"):
        assert function in state["wrapped"], state

    # every deselection still names tests of the suite
    deselected = disabled.p2d_state()["deselected"]
    stale = [node for ids in DESELECTED.values() for node in ids if not any(d.startswith(node) for d in deselected)]
    assert not stale, f"deselections that match no test: {stale}"

    # the runs are not vacuous
    passed = sum(outcome == "passed" for outcome, _ in off.values())
    assert passed >= MIN_PASSED, f"only {passed} tests passed with P2D disabled: {_counts(off)}\n{disabled.log_tail()}"

    # the same tests, with the same outcomes
    assert set(on) == set(off), f"tests only in one run: {sorted(set(on) ^ set(off))}"
    differ = [t for t in sorted(off) if on[t][0] != off[t][0]]
    report = "\n\n".join(
        f"{t}: {off[t][0]} with P2D disabled, {on[t][0]} with P2D active\n{on[t][1][-3000:] or off[t][1][-3000:]}"
        for t in differ
    )
    assert not differ, f"{len(differ)} tests differ between the runs:\n\n{report}"
