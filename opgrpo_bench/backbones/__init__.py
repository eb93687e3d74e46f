"""Backbones: the only place where model families differ (encode, velocity, decode).

Tasks name a backbone registered here (``TaskSpec.backbone``, with ``backbone_args``); the trainer builds it
through this registry. Each entry's ``meta`` holds ``needs`` (one line for ``opgrpo-bench list backbones``)
and ``external_weights``: True when it cannot be built without weights from outside the package (the
backbone contract test skips those).
"""

from opgrpo_bench.registry import BACKBONES

_FOLDER = "weights on disk (path=...); GPU for real sizes"
_BUILT = "CPU; built on first use"
_SHIPPED = "CPU; shipped in the package"

BACKBONES.register("sd3", "opgrpo_bench.backbones.sd3:SD3Backbone.from_pretrained",
                   description="Stable Diffusion 3 / 3.5 (diffusers folder, local path or HF cache)",
                   needs=_FOLDER, external_weights=True)
BACKBONES.register("sd35m", "opgrpo_bench.backbones.models:load_sd35m_backbone",
                   description="Stable Diffusion 3.5 Medium at 512 px (bf16 on GPU)",
                   needs="GPU; weights at $OPGRPO_SD35M_PATH or in the HF cache", external_weights=True)
BACKBONES.register("tiny-sd3", "opgrpo_bench.backbones.models:load_tiny_sd3_backbone",
                   description="tiny SD3 pipeline built in code (2 CLIP + T5 + VAE), 32 px, loaded via "
                               "from_pretrained (tiny-sd3-jpeg-v1)",
                   needs=_BUILT, external_weights=False)
BACKBONES.register("flux", "opgrpo_bench.backbones.flux:FluxBackbone.from_pretrained",
                   description="FLUX.1 (diffusers folder, local path or HF cache); distilled guidance, no true CFG",
                   needs=_FOLDER, external_weights=True)
BACKBONES.register("flux1-dev", "opgrpo_bench.backbones.models:load_flux_dev_backbone",
                   description="FLUX.1-dev at 512 px, distilled guidance 3.5 (bf16 on GPU, float32 VAE)",
                   needs="GPU; weights at $OPGRPO_FLUX_PATH or in the HF cache", external_weights=True)
BACKBONES.register("tiny-flux", "opgrpo_bench.backbones.models:load_tiny_flux_backbone",
                   description="tiny FLUX pipeline built in code (CLIP + T5 + VAE), 32 px, loaded via "
                               "from_pretrained (tiny-flux-jpeg-v1)",
                   needs=_BUILT, external_weights=False)
BACKBONES.register("wan", "opgrpo_bench.backbones.wan:WanBackbone.from_pretrained",
                   description="Wan2.1 text-to-video (diffusers folder, local path or HF cache); true CFG, 5-D latents",
                   needs=_FOLDER, external_weights=True)
BACKBONES.register("wan21-t2v-1.3b", "opgrpo_bench.backbones.models:load_wan21_backbone",
                   description="Wan2.1-T2V-1.3B at 240x416, 33 frames (bf16 on GPU, float32 VAE)",
                   needs="GPU; weights at $OPGRPO_WAN_PATH or in the HF cache", external_weights=True)
BACKBONES.register("tiny-wan", "opgrpo_bench.backbones.models:load_tiny_wan_backbone",
                   description="tiny Wan2.1 pipeline built in code (UMT5 + 3-D VAE), 9 frames of 32 px, loaded via "
                               "from_pretrained (tiny-wan-video-v1)",
                   needs=_BUILT, external_weights=False)
BACKBONES.register("digits-v1-base", "opgrpo_bench.backbones.digits:load_digits_backbone",
                   description="digits-v1 base model: 4-layer SD3 transformer in pixel space [1, 8, 8] + tiny CLIP "
                               "(digits-v1, digits-sparse-v1)",
                   needs=_SHIPPED, external_weights=False)
BACKBONES.register("digits-pair-v1-base", "opgrpo_bench.backbones.digits:load_pair_backbone",
                   description="digits-pair-v1 base model: the digits-v1 architecture on [1, 8, 16] (two digits)",
                   needs=_SHIPPED, external_weights=False)
BACKBONES.register("digits-number-v1-base", "opgrpo_bench.backbones.digits:load_number_backbone",
                   description="digits-number-v1 base model: the digits-v1 architecture on [1, 8, 24] (3-digit "
                               "numbers; all digits-number tasks)",
                   needs=_SHIPPED, external_weights=False)
BACKBONES.register("digits-video-v1-base", "opgrpo_bench.backbones.digits:load_video_backbone",
                   description="digits-video-v1 base model: 2-block Wan transformer in pixel space [1, 4, 8, 14] "
                               "(4 frames, no VAE; coordinate maps as channel conditioning) + tiny CLIP",
                   needs=_SHIPPED, external_weights=False)
BACKBONES.register("stub-video", "opgrpo_bench.backbones.stub_video:build_stub_video_backbone",
                   description="TEST STUB: random Conv3d velocity net on video latents [3, 4, 8, 8] (5-D), "
                               "hashed-word text embedding; exercises video shapes, not a model",
                   needs="CPU; built in code", external_weights=False)
