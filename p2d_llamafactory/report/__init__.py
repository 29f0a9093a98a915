"""Reports: plots of head scores, timings."""
