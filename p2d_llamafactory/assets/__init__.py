"""Quickstart assets: the SmolLM2-135M-Instruct model folder and the offline demo data set."""
