"""End-to-end tests: the stock ``llamafactory-cli`` (train, export, resume), torchrun with DeepSpeed, and
LLaMA-Board in a real browser. Minutes in all; every test here is marked ``slow`` (``-m "not slow"`` skips them).

The session-scoped tiny models, tokenizer and dataset come from ``tests/conftest.py``.
"""

from pathlib import Path

import pytest


E2E = Path(__file__).resolve().parent


@pytest.hookimpl(tryfirst=True)  # before ``-m`` deselects by marker
def pytest_collection_modifyitems(items):
    for item in items:
        if E2E in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.slow)
