"""Helpers shared by the tests; nothing here is collected as a test.

``tiny``: tiny random models, a tokenizer, inputs. ``examples``: the demo data in the forms the stages read.
``references``: independent reference computations the tests compare against. ``cli``: the stock
``llamafactory-cli`` and LLaMA-Factory's parser. ``board``: LLaMA-Board built in-process. ``browser``:
LLaMA-Board served by ``llamafactory-cli webui`` and driven in chromium with Playwright.
"""
