"""Backbones: the only place where model families differ (encode, velocity, decode)."""

from opgrpo_bench.registry import BACKBONES

BACKBONES.register("sd3", "opgrpo_bench.backbones.sd3:SD3Backbone.from_pretrained",
                   description="Stable Diffusion 3 / 3.5 (diffusers folder, local path or HF cache)",
                   needs="weights on disk; GPU for real sizes")
BACKBONES.register("digits-sd3-tiny", "opgrpo_bench.tasks.digits:load_backbone",
                   description="digits-v1 base model: 4-layer SD3 transformer in pixel space + tiny CLIP",
                   needs="CPU; shipped in the package")
BACKBONES.register("tiny-sd3", "opgrpo_bench.tasks.sd3_tasks:load_tiny_sd3_backbone",
                   description="tiny SD3 pipeline built in code (2 CLIP + T5 + VAE), 32 px, loaded via from_pretrained",
                   needs="CPU; built on first use")
BACKBONES.register("sd35m", "opgrpo_bench.tasks.sd3_tasks:load_sd35m_backbone",
                   description="Stable Diffusion 3.5 Medium at 512 px (bf16 on GPU)",
                   needs="GPU; weights at $OPGRPO_SD35M_PATH or in the HF cache")
