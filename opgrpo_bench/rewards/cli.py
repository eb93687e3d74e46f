"""``opgrpo-bench score``: score image files with a registered reward.

A plain function with Typer annotations; the main CLI mounts it with ``app.command("score")(score)``.
User errors (unknown reward, missing weights or package, unreadable image, bad option) print one line
to stderr and exit with code 2, without a traceback.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any, Optional

import typer


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(2)


def load_image(path: Path) -> Any:
    """A [1, 3, H, W] float tensor in [0, 1] from an image file (RGB)."""
    import numpy as np
    import torch
    from PIL import Image

    with Image.open(path) as img:
        array = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1)[None].contiguous()


def _number(x: float) -> float | None:
    return None if math.isnan(x) else x


def score(
    reward: Annotated[str, typer.Option("--reward", "-r", help="registered reward name (see `list rewards`)")],
    prompt: Annotated[str, typer.Option("--prompt", "-p", help="prompt used for every image")],
    images: Annotated[list[Path], typer.Argument(help="image files to score", show_default=False)],
    json_: Annotated[bool, typer.Option("--json", help="print a JSON array, one object per image")] = False,
    metadata: Annotated[
        Optional[str], typer.Option("--metadata", help="JSON object passed as every image's metadata")
    ] = None,
    option: Annotated[
        Optional[list[str]], typer.Option("--set", help="reward constructor argument key=value (repeatable)")
    ] = None,
) -> None:
    """Score IMAGE files with a reward: one score per image (NaN = not applicable)."""
    from opgrpo_bench.registry import REWARDS, UnknownNameError
    from opgrpo_bench.rewards.base import RewardUnavailableError
    from opgrpo_bench.rewards.server import parse_sets

    try:
        kwargs = parse_sets(option or [])
        meta = json.loads(metadata) if metadata else {}
        if not isinstance(meta, dict):
            raise ValueError("--metadata must be a JSON object")
    except (ValueError, json.JSONDecodeError) as exc:
        raise _fail(str(exc)) from None
    for path in images:
        if not path.is_file():
            raise _fail(f"image '{path}' does not exist")
    try:
        reward_cls = REWARDS.get(reward)
        model = reward_cls(**kwargs)
    except (UnknownNameError, RewardUnavailableError) as exc:
        raise _fail(str(exc)) from None
    except TypeError as exc:
        raise _fail(f"bad --set for reward '{reward}': {exc}") from None
    try:
        tensors = [load_image(p) for p in images]
    except OSError as exc:
        raise _fail(f"cannot read image: {exc}") from None

    rows: list[dict[str, Any]] = []
    for path, tensor in zip(images, tensors):  # one at a time: images may differ in size
        out = model(tensor, [prompt], [dict(meta)])
        row: dict[str, Any] = {"image": str(path), "score": round(float(out.scores[0]), 6)}
        row.update({k: round(float(v[0]), 6) for k, v in out.components.items()})
        for key, value in out.info.items():
            if isinstance(value, list) and len(value) == 1 and isinstance(value[0], (str, int, float, type(None))):
                row.setdefault(key, value[0])
        rows.append(row)
    if json_:
        clean = [{k: _number(v) if isinstance(v, float) else v for k, v in r.items()} for r in rows]
        typer.echo(json.dumps(clean, indent=2))
    else:
        for row in rows:
            typer.echo(f"{row['score']:.4f}\t{row['image']}")
