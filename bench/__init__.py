"""Benchmarks, each measured in one run so its ratios compare like with like.

* :mod:`.mc_bench` — ``tunepp bench``: whole-volume MC-inference latency per backend x precision x
  sample count, split into stages, with the naive-loop / single-pass / trunk-reuse-off baselines and
  a FLOP floor (helpers: :mod:`.workload`, :mod:`.probes`, :mod:`.floor`, :mod:`.report`);
* :mod:`.kernels` — ``tunepp bench kernels``: topology kernels against reference libraries.
"""
