"""One-off experiments (throughput, engine thresholds, MILP tables, parse times): run from a clone, not installed."""
