"""Benchmark harnesses shared by ``benchmarks/`` and the workflow (core imports only).

``forecast``: GFM against the baselines on the generalisation splits; ``jumps``: training steps
to a target accuracy with and without forecast jumps.
"""
