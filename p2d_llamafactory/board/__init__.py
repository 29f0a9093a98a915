"""LLaMA-Board front end of P2D: the "P2D" accordion on the Train tab (settings, texts, widgets).

``settings`` maps the accordion's values to ``p2d_*`` keys and validates them, ``locales`` holds the labels in
every language LLaMA-Board offers, ``accordion`` builds the gradio widgets. ``integration.webui`` puts them into
the stock web UI.
"""
