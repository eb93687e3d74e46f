"""Images per second of each offline reward on this machine (the reference machine has 2 CPU cores).

    python benchmarks/reward_throughput.py                       # all offline rewards, 512x512 images
    python benchmarks/reward_throughput.py --rewards ocr --size 256 --images 32 --json out.json

Inputs are realistic for each reward: rendered text on a textured background (OCR: what a text-rendering
policy produces), noisy photographs-like images (JPEG), 8x8 digits (digit classifier), and for
``video-ocr`` 33-frame 240x416 videos as in the Wan2.1 task (reported as frames per second too).
Each reward is built and warmed up once before timing; scoring runs in batches of ``--batch``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image, ImageDraw, ImageFont  # noqa: E402

from opgrpo_bench.registry import REWARDS  # noqa: E402

WORDS = ["HELLO", "OPEN SIGN", "Flow GRPO", "CAFE 24/7", "STOP", "Welcome home", "SALE 50%", "diffusion"]


def text_images(n: int, h: int, w: int, seed: int = 0) -> tuple[torch.Tensor, list[str]]:
    """Text rendered on a noisy coloured background, and prompts quoting a word (half of them the wrong one)."""
    rng = np.random.default_rng(seed)
    font = ImageFont.load_default(size=max(12, h // 8))
    images, prompts = [], []
    for i in range(n):
        bg = (rng.uniform(0.5, 0.9, 3) * 255 + rng.normal(0, 12, (h, w, 3))).clip(0, 255).astype(np.uint8)
        img = Image.fromarray(bg)
        ImageDraw.Draw(img).text((w // 10, h // 2 - h // 16), WORDS[i % len(WORDS)], fill=(20, 20, 40), font=font)
        images.append(torch.from_numpy(np.asarray(img, dtype=np.float32) / 255).permute(2, 0, 1))
        prompts.append(f'A photo of a sign that says "{WORDS[(i + i % 2) % len(WORDS)]}"')
    return torch.stack(images), prompts


def noise_images(n: int, h: int, w: int, seed: int = 0) -> tuple[torch.Tensor, list[str]]:
    g = torch.Generator().manual_seed(seed)
    smooth = torch.nn.functional.interpolate(torch.rand(n, 3, h // 16, w // 16, generator=g), size=(h, w), mode="bilinear")
    return (smooth + 0.1 * torch.rand(n, 3, h, w, generator=g)).clamp(0, 1), ["a photo"] * n


def digit_images(n: int, h: int, w: int, seed: int = 0) -> tuple[torch.Tensor, list[str]]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images[:n] / 16.0, dtype=torch.float32)[:, None]
    return x, [f"the digit {int(t)}" for t in digits.target[:n]]


def video_batch(n: int, h: int, w: int, seed: int = 0, frames: int = 33) -> tuple[torch.Tensor, list[str]]:
    imgs, prompts = text_images(n, 240, 416, seed)
    shift = [torch.roll(imgs, shifts=2 * f, dims=-1) for f in range(frames)]  # text drifting across the frame
    return torch.stack(shift, dim=1), prompts


CASES: dict[str, tuple[Callable[..., tuple[torch.Tensor, list[str]]], dict[str, Any]]] = {
    "ocr": (text_images, {}),
    "jpeg-compressibility": (noise_images, {}),
    "jpeg-incompressibility": (noise_images, {}),
    "digit-classifier": (digit_images, {}),
    "video-ocr": (video_batch, {}),
}


def bench(name: str, n: int, size: int, batch: int) -> dict[str, Any]:
    make, kwargs = CASES[name]
    t0 = time.perf_counter()
    reward = REWARDS.get(name)(**kwargs)
    build_s = time.perf_counter() - t0
    video = name.startswith("video")
    count = max(1, n // 8) if video else n
    images, prompts = make(count, size, size)
    reward(images[:1], prompts[:1])  # warm-up
    t0 = time.perf_counter()
    scores = []
    for i in range(0, count, batch):
        scores.append(reward(images[i : i + batch], prompts[i : i + batch]).scores)
    elapsed = time.perf_counter() - t0
    s = torch.cat(scores)
    row = {"reward": name, "items": count, "shape": list(images.shape[1:]), "seconds": round(elapsed, 3),
           "items_per_s": round(count / elapsed, 2), "build_s": round(build_s, 2),
           "mean_score": round(float(torch.nanmean(s)), 4)}
    if video:
        row["frames_per_s"] = round(count * images.shape[1] / elapsed, 2)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rewards", nargs="*", default=list(CASES), choices=list(CASES))
    parser.add_argument("--images", type=int, default=32, help="images per reward (videos: images / 8)")
    parser.add_argument("--size", type=int, default=512, help="image side in pixels (digits stay 8x8)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    env = {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
           "torch": torch.__version__, "machine": platform.machine()}
    print(f"# reward throughput  {env}")
    print(f"{'reward':<24} {'items':>6} {'shape':<18} {'items/s':>9} {'frames/s':>9} {'build s':>8} {'mean':>8}")
    rows = []
    for name in args.rewards:
        try:
            row = bench(name, args.images, args.size, args.batch)
        except Exception as exc:  # report and go on: one missing optional package must not hide the others
            print(f"{name:<24} skipped: {type(exc).__name__}: {exc}")
            continue
        rows.append(row)
        print(f"{row['reward']:<24} {row['items']:>6} {'x'.join(map(str, row['shape'])):<18} {row['items_per_s']:>9} "
              f"{row.get('frames_per_s', ''):>9} {row['build_s']:>8} {row['mean_score']:>8}", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"env": env, "results": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
