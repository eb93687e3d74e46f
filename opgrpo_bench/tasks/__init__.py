"""Task specs. Importing this package registers the built-in tasks lazily (no heavy imports)."""

from opgrpo_bench.registry import TASKS
from opgrpo_bench.tasks.spec import Prompt, TaskSpec

TASKS.register("digits-v1", "opgrpo_bench.tasks.digits:DIGITS_V1", aliases=("digits",),
               description="8x8 handwritten digits, tiny SD3 transformer, reward = p(prompted digit)",
               needs="CPU")

__all__ = ["Prompt", "TaskSpec", "TASKS"]
