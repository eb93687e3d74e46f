"""Task specs. Importing this package registers the built-in tasks lazily (no heavy imports).

Each entry's ``description`` and ``needs`` are the task's one copy of them: ``opgrpo-bench list tasks`` shows
them without building a spec, and the built-in specs read them from here (:func:`~opgrpo_bench.tasks.spec.listed`).
"""

from opgrpo_bench.registry import TASKS
from opgrpo_bench.tasks.spec import Prompt, TaskSpec

_SHIPPED = "CPU; assets shipped in the package"
_BUILT = "CPU; built in code on first use (cached under ~/.cache/opgrpo-bench or $OPGRPO_CACHE_DIR)"

TASKS.register("digits-v1", "opgrpo_bench.tasks.digits:DIGITS_V1", aliases=("digits",),
               description="8x8 handwritten digits, tiny SD3 transformer, reward = p(prompted digit)",
               needs=_SHIPPED)
TASKS.register("digits-pair-v1", "opgrpo_bench.tasks.digits_pair:DIGITS_PAIR_V1", aliases=("digits-pair",),
               description="two digits side by side as prompted (8x16), reward = both right (binary, sparse)",
               needs=_SHIPPED)
TASKS.register("digits-number-v1", "opgrpo_bench.tasks.digits_number:DIGITS_NUMBER_V1",
               aliases=("digits-number",), needs=_SHIPPED,
               description="render a 3-digit number (8x24), 800 train / 100 held-out numbers, reward = "
                           "1 - edit distance / 3 (OCR-like)")
TASKS.register("digits-video-v1", "opgrpo_bench.tasks.digits_video:DIGITS_VIDEO_V1", aliases=("digits-video",),
               needs=_SHIPPED, description="a handwritten digit moving left/right (4 frames of 8x14), tiny Wan "
                                        "transformer, reward = p(prompted digit) per frame x motion")
for _pool in (20, 100):
    TASKS.register(f"digits-number-pool{_pool}-v1", f"opgrpo_bench.tasks.digits_number:DIGITS_NUMBER_POOL{_pool}_V1",
                   description=f"digits-number-v1 trained on its first {_pool} training numbers (same eval set)",
                   needs=_SHIPPED)
del _pool

TASKS.register("tiny-sd3-jpeg-v1", "opgrpo_bench.tasks.sd3_tasks:TINY_SD3_JPEG_V1", aliases=("tiny-sd3",),
               description="tiny in-code SD3 pipeline (3 text encoders, VAE, CFG), 32 px; reward = -JPEG kB",
               needs=_BUILT)
for _family, _reward in (("ocr", "OCR"), ("pickscore", "PickScore"), ("geneval", "GenEval")):
    TASKS.register(f"{_family}-sd35m-v1", f"opgrpo_bench.tasks.sd3_tasks:{_family.upper()}_SD35M_V1",
                   description=f"SD3.5-Medium 512 px, reward = {_reward}, Flow-GRPO prompts and settings",
                   needs="GPU; SD3.5-M weights ($OPGRPO_SD35M_PATH or HF cache); prompt files "
                         "($OPGRPO_PROMPTS_DIR); reward weights")
    TASKS.register(f"{_family}-sd35m-smoke-v1", f"opgrpo_bench.tasks.sd3_tasks:{_family.upper()}_SD35M_SMOKE_V1",
                   description=f"SMOKE: SD3.5-Medium, reward = {_reward}, built-in sample prompts, 4 steps "
                               "(wiring check, not comparable)",
                   needs="GPU; SD3.5-M weights ($OPGRPO_SD35M_PATH or HF cache); reward weights")
del _family, _reward

TASKS.register("tiny-flux-jpeg-v1", "opgrpo_bench.tasks.flux_tasks:TINY_FLUX_JPEG_V1", aliases=("tiny-flux",),
               description="tiny in-code FLUX pipeline (CLIP + T5 + VAE, distilled guidance), 32 px; reward = "
                           "-JPEG kB", needs=_BUILT)
TASKS.register("pickscore-flux-v1", "opgrpo_bench.tasks.flux_tasks:PICKSCORE_FLUX_V1",
               description="FLUX.1-dev 512 px, reward = PickScore, Flow-GRPO prompts and settings",
               needs="GPU; FLUX.1-dev weights ($OPGRPO_FLUX_PATH or HF cache); prompt files ($OPGRPO_PROMPTS_DIR); "
                     "reward weights")
TASKS.register("pickscore-flux-smoke-v1", "opgrpo_bench.tasks.flux_tasks:PICKSCORE_FLUX_SMOKE_V1",
               description="SMOKE: FLUX.1-dev, reward = PickScore, built-in sample prompts, 4 steps (wiring check, "
                           "not comparable)",
               needs="GPU; FLUX.1-dev weights ($OPGRPO_FLUX_PATH or HF cache); reward weights")

TASKS.register("tiny-wan-video-v1", "opgrpo_bench.tasks.wan_tasks:TINY_WAN_VIDEO_V1", aliases=("tiny-wan",),
               description="tiny in-code Wan2.1 pipeline (UMT5 + 3-D VAE, CFG), 9 frames of 32 px; reward = -JPEG kB "
                           "per frame (video)", needs=_BUILT)
TASKS.register("video-ocr-wan21-v1", "opgrpo_bench.tasks.wan_tasks:VIDEO_OCR_WAN21_V1",
               description="Wan2.1-T2V-1.3B 240x416 x 33 frames, reward = OCR per frame (video-ocr), Flow-GRPO "
                           "prompts and settings",
               needs="GPU; Wan2.1 weights ($OPGRPO_WAN_PATH or HF cache); prompt files ($OPGRPO_PROMPTS_DIR); "
                     "OCR reward (rapidocr)")
TASKS.register("video-ocr-wan21-smoke-v1", "opgrpo_bench.tasks.wan_tasks:VIDEO_OCR_WAN21_SMOKE_V1",
               description="SMOKE: Wan2.1-T2V-1.3B, reward = video OCR, built-in sample prompts, 4 steps (wiring "
                           "check, not comparable)",
               needs="GPU; Wan2.1 weights ($OPGRPO_WAN_PATH or HF cache); OCR reward (rapidocr)")

TASKS.register("digits-sparse-v1", "opgrpo_bench.tasks.digits_sparse:DIGITS_SPARSE_V1",
               description="digits-v1 base model, hardest digits, binary success (sparse rewards)", needs=_SHIPPED)

__all__ = ["Prompt", "TaskSpec", "TASKS"]
