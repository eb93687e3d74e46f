"""Random-weight folders at the real architectures load through the backbones' from_pretrained (marker
``arch``: each folder is 2-5 GB at depth 1, because the text encoders keep their real vocabularies).

The folders are built once into ``$OPGRPO_ARCH_CACHE`` or the pytest cache (``.pytest_cache/d/opgrpo-arch``).
Run with ``pytest -m arch tests/capacity/test_arch_folders.py``.
"""

import json
import os

import pytest
import torch

from opgrpo_bench.arch.folders import META_FILE, arch_folder
from opgrpo_bench.backbones.folders import missing_components

pytestmark = pytest.mark.arch


@pytest.fixture(scope="module")
def cache(request):
    return os.environ.get("OPGRPO_ARCH_CACHE") or str(request.config.cache.mkdir("opgrpo-arch"))


def _load(family, folder):
    if family == "sd3.5-medium":
        from opgrpo_bench.backbones.sd3 import SD3Backbone

        return SD3Backbone.from_pretrained(folder, dtype=torch.bfloat16, resolution=64, max_sequence_length=16)
    if family == "flux.1-dev":
        from opgrpo_bench.backbones.flux import FluxBackbone

        return FluxBackbone.from_pretrained(folder, dtype=torch.bfloat16, resolution=64, max_sequence_length=16)
    from opgrpo_bench.backbones.wan import WanBackbone

    return WanBackbone.from_pretrained(folder, dtype=torch.bfloat16, height=32, width=32, num_frames=5,
                                       max_sequence_length=16)


@pytest.mark.parametrize("family, latent", [("sd3.5-medium", (16, 8, 8)), ("flux.1-dev", (16, 8, 8)),
                                            ("wan2.1-t2v-1.3b", (16, 2, 4, 4))])
def test_arch_folder_loads_and_runs(family, latent, cache):
    folder = arch_folder(family, depth=1, root=cache)
    assert missing_components(folder) == []
    meta = json.loads((folder / META_FILE).read_text())
    assert meta["variant"] == f"{family}-depth1" and meta["depth"] == 1
    backbone = _load(family, folder)
    assert tuple(backbone.latent_shape) == latent
    pipe = backbone.pipeline
    # real widths and vocabularies survive the round trip through save_pretrained / from_pretrained
    encoders = [m for n, m in pipe.components.items() if n.startswith("text_encoder") and m is not None]
    vocab = {m.get_input_embeddings().num_embeddings for m in encoders}
    assert vocab == ({256384} if family.startswith("wan") else {49408, 32128})
    cond = backbone.encode(['a sign that says "HELLO"'])
    x = torch.randn((1, *latent), generator=torch.Generator().manual_seed(0))
    guidance = 1.0 if family == "flux.1-dev" else 4.5
    v = backbone.velocity(x, torch.tensor([0.5]), cond, guidance)
    assert v.shape == x.shape and torch.isfinite(v).all()
    frames = backbone.decode(x)
    assert torch.isfinite(frames).all() and frames.min() >= 0 and frames.max() <= 1
