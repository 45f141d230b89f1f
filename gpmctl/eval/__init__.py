"""Benchmarks and metrics: RewardBench (official scoring), RewardBench 2, RM-Bench, preference files, cyclic sets.

Each evaluator is split in two: scoring (a model embeds every response once; `scoring.py`) and
aggregation (plain Python on per-example results, so a saved per-example file can be re-aggregated
without a model: `--scores`).
"""
