"""Benchmarks of steer-plugin against plain transformers / lm-evaluation-harness (not part of the wheel).

Run from the repository root, e.g. ``python -m benchmarks.record``; each prints ratios against a baseline
measured in the same process and rewrites its own section of BENCHMARKS.md. ``benchmarks.common`` is
their shared harness (bench models, texts, alternating timings, the BENCHMARKS.md sections).
"""
