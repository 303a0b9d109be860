"""Benchmarks: topology kernels against reference libraries, measured in one run."""
