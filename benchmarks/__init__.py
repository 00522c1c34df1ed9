"""Benchmarks: the SparseLinear micro-benchmark and the prepared GPU device check (`python -m benchmarks.gpu_check`)."""
