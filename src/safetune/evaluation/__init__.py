"""Evaluation harness: benchmarks -> generation backends -> judges -> metrics, staged and resumable."""
