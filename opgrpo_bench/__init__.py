"""opgrpo-bench: benchmark RL post-training algorithms for flow-matching models by steps to target reward."""

__version__ = "0.1.0"
SCHEMA = "opgrpo-bench/v1"
