"""Backbones: the only place where model families differ (encode, velocity, decode)."""

from opgrpo_bench.registry import BACKBONES

BACKBONES.register("sd3", "opgrpo_bench.backbones.sd3:SD3Backbone.from_pretrained",
                   description="Stable Diffusion 3 / 3.5 (diffusers folder, local path or HF cache)",
                   needs="weights on disk; GPU for real sizes")
BACKBONES.register("digits-sd3-tiny", "opgrpo_bench.tasks.digits:load_backbone",
                   description="digits-v1 base model: 4-layer SD3 transformer in pixel space + tiny CLIP",
                   needs="CPU; shipped in the package")
