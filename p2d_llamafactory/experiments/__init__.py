"""Offline experiment tools (p2d-eval, p2d-grid, p2d-sweep) above the run-time code; nothing run-time imports them."""
