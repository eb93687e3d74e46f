"""The planner's assumed GPU throughput, kept apart from the estimation code so that the command line can
show the defaults without importing torch."""

DEFAULT_MFU = 0.30
"""[assumption] Model FLOPs utilisation of a whole iteration. Not measured by this project: a round figure
below the 35-45% usually reported for bf16 transformer training with fused attention on H100-class GPUs,
because an RL iteration is dominated by no-grad sampling calls of a few rows. ``benchmarks/gpu_check.py``
measures the real one; pass it with ``--mfu``."""
DEFAULT_PEAK_TFLOPS = 989.0
"""NVIDIA H100 SXM dense bf16 tensor-core peak (the datasheet's 1,979 TFLOPS is with 2:4 sparsity)."""
