"""A pytest plugin for the runs of LLaMA-Factory's own suite in ``tests/e2e/test_stock_suite.py`` (loaded there with
``-p lf_suite_plugin``; it is not a plugin of this project's tests).

- It seeds ``random``, numpy and torch right before each test body: the stock tests check rows drawn with unseeded
  ``random.choices``, and both runs (P2D active, P2D disabled) should check the same rows.
- At the end it writes to ``$P2D_LF_SUITE_STATE`` (JSON) whether the P2D extensions were active in the process that
  ran the tests, which LLaMA-Factory functions carry P2D's wrapper, and the node ids that ``--deselect`` removed.
"""

import inspect
import json
import os
import random
import sys

import pytest


SEED = 0
DESELECTED: list[str] = []


def pytest_deselected(items):
    DESELECTED.extend(item.nodeid for item in items)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_call(item):
    random.seed(SEED)
    if "numpy" in sys.modules:
        sys.modules["numpy"].random.seed(SEED)
    if "torch" in sys.modules:
        sys.modules["torch"].manual_seed(SEED)


def p2d_state() -> dict:
    """``active``: ``p2d_llamafactory._autoload.ACTIVE``; ``wrapped``: the patched functions of LLaMA-Factory's
    imported modules."""
    autoload = sys.modules.get("p2d_llamafactory._autoload")
    wrapped = []
    for module_name in getattr(autoload, "PATCH_TARGETS", {}):
        module = sys.modules.get(module_name)
        if module is None:
            continue
        for name, obj in vars(module).items():
            if inspect.isfunction(obj) and getattr(obj, "__p2d_original__", None) is not None:
                wrapped.append(f"{module_name}.{name}")
    return {"imported": autoload is not None, "active": bool(getattr(autoload, "ACTIVE", False)), "wrapped": wrapped}


def pytest_sessionfinish(session):
    path = os.environ.get("P2D_LF_SUITE_STATE")
    if path:
        with open(path, "w") as f:
            json.dump({**p2d_state(), "deselected": DESELECTED}, f, indent=1)
