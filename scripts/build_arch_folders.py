"""Write random-weight diffusers folders at the real architectures (nothing is downloaded).

    python scripts/build_arch_folders.py OUT_DIR [--family sd3.5-medium ...] [--depth N] [--dtype bfloat16]

Each folder is a complete diffusers pipeline (transformer, VAE, every text encoder, scheduler, tokenizers of
the real vocabulary sizes) with the published configuration of SD3.5-Medium, FLUX.1-dev or
Wan2.1-T2V-1.3B (``opgrpo_bench/arch/configs.py`` names the source of each) and seeded random weights,
loadable by the backbones' ``from_pretrained`` as a downloaded copy would be. Without ``--depth`` it is the
published model: in bf16 that needs about 16 GB of memory for SD3.5-Medium, 34 GB for FLUX.1-dev (12B
transformer + T5-XXL) and 15 GB for Wan2.1-1.3B (UMT5-XXL is most of it) while building, and as much disk.
``--depth N`` caps every stack at N blocks and keeps widths, heads, vocabularies and layer types; the
folder's name says ``-depthN``. The tests use ``opgrpo_bench.arch.folders.arch_folder`` (a cached copy).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from opgrpo_bench.arch.configs import FAMILIES, variant_name
from opgrpo_bench.arch.folders import build_arch_folder


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path, help="directory that receives one folder per family")
    p.add_argument("--family", action="append", choices=FAMILIES, help="repeatable; default: all three")
    p.add_argument("--depth", type=int, default=None, help="blocks per stack (default: the published depth)")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if args.depth is not None and args.depth < 1:
        p.error("--depth must be positive")
    for family in args.family or FAMILIES:
        folder = args.out / variant_name(family, args.depth)
        if folder.exists():
            p.error(f"{folder} exists; remove it or choose another OUT_DIR")
        start = time.perf_counter()
        build_arch_folder(folder, family, args.depth, args.seed, getattr(torch, args.dtype))
        size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
        print(f"{folder}: {size / 2**30:.2f} GiB in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
