"""Metric modules of evaluate.py; each registers itself (``wan2.eval.registry.load_metrics`` imports them all)."""
