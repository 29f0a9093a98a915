"""Stage II, parameter-guided data selection: prompts and spans, restricted attention sums, probing, scorers, baselines, cache."""
