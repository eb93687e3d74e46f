"""``opgrpo-bench score``: score image files with a registered reward.

A plain function with Typer annotations; the main CLI mounts it with ``app.command("score")(score)``.
User errors (unknown reward, missing weights or package, unreadable image, an image of the wrong size
for the reward, bad ``--set`` or ``--metadata``) raise :class:`opgrpo_bench.errors.UserError` with a
one-line message; the main CLI prints it as ``error: ...`` and exits with code 2, without a traceback.

A NaN score means the reward does not apply to that image and prompt; the output says why (the
reward's ``info["nan_reason"]``), e.g. an OCR prompt without quoted text.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from opgrpo_bench.errors import UserError


def load_image(path: Path, channels: int = 3) -> Any:
    """A [1, C, H, W] float tensor in [0, 1] from an image file: RGB (``channels=3``) or grey (``channels=1``)."""
    import numpy as np
    import torch
    from PIL import Image

    with Image.open(path) as img:
        if channels == 1:
            array = np.asarray(img.convert("L"), dtype=np.float32)[..., None] / 255.0
        else:
            array = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1)[None].contiguous()


def expected_shape(model: Any) -> tuple[int, int, int] | None:
    """The [C, H, W] a reward requires (its ``input_shape``, e.g. 1x8x8 for ``digit-classifier``), or None."""
    shape = getattr(model, "input_shape", None)
    if shape is None:
        return None
    c, h, w = (int(x) for x in shape)
    return c, h, w


def check_image_size(reward: str, model: Any, path: Path, size: tuple[int, int]) -> None:
    """Raise :class:`UserError` when an image of ``size`` (width, height) does not fit the reward's input.

    Rewards without ``input_shape`` take any size.
    """
    shape = expected_shape(model)
    if shape is None:
        return
    _, h, w = shape
    if size != (w, h):
        raise UserError(f"reward '{reward}' scores {w}x{h} images (width x height, the size its task generates), "
                        f"but '{path}' is {size[0]}x{size[1]}; resize it to {w}x{h} first")


def parse_metadata(text: str | None) -> dict[str, Any]:
    """The ``--metadata`` JSON object ({} when absent); :class:`UserError` when it is not JSON or not an object."""
    if not text:
        return {}
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"--metadata is not valid JSON ({exc.msg} at character {exc.pos}); pass a JSON object, "
                        f"e.g. --metadata '{{\"text\": \"HELLO\"}}'") from None
    if not isinstance(meta, dict):
        raise UserError(f"--metadata must be a JSON object ({{...}}), got a JSON {type(meta).__name__}")
    return meta


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
    """Score IMAGE files with a reward: one score per image (NaN = not applicable, with the reason)."""
    from PIL import Image, UnidentifiedImageError

    from opgrpo_bench.registry import REWARDS, UnknownNameError
    from opgrpo_bench.rewards.base import NAN_REASON, nan_reason
    from opgrpo_bench.rewards.server import parse_sets

    try:
        kwargs = parse_sets(option or [])
    except ValueError as exc:
        raise UserError(f"bad --set: {exc}") from None
    meta = parse_metadata(metadata)
    for path in images:
        if not path.is_file():
            raise UserError(f"image '{path}' does not exist")
    try:
        model = REWARDS.get(reward)(**kwargs)
    except UnknownNameError as exc:
        raise UserError(str(exc)) from None
    except TypeError as exc:
        raise UserError(f"bad --set for reward '{reward}': {exc}") from None
    shape = expected_shape(model)
    try:
        for path in images:  # every size is checked before anything is scored
            with Image.open(path) as img:
                check_image_size(reward, model, path, img.size)
        tensors = [load_image(p, channels=shape[0] if shape else 3) for p in images]
    except (OSError, UnidentifiedImageError) as exc:
        raise UserError(f"cannot read image: {exc}") from None

    rows: list[dict[str, Any]] = []
    for path, tensor in zip(images, tensors):  # one at a time: images may differ in size
        try:
            out = model(tensor, [prompt], [dict(meta)])
        except ValueError as exc:  # e.g. metadata the reward cannot use
            raise UserError(f"reward '{reward}' cannot score '{path}': {' '.join(str(exc).split())}") from None
        value = float(out.scores[0])
        row: dict[str, Any] = {"image": str(path), "score": round(value, 6)}
        if math.isnan(value):
            row["nan_reason"] = nan_reason(out, 0) or f"reward '{reward}' does not apply here (it gives no reason)"
        row.update({k: round(float(v[0]), 6) for k, v in out.components.items()})
        for key, item in out.info.items():
            if key == NAN_REASON:
                continue
            if isinstance(item, list) and len(item) == 1 and isinstance(item[0], (str, int, float, type(None))):
                row.setdefault(key, item[0])
        rows.append(row)
    if json_:
        clean = [{k: _number(v) if isinstance(v, float) else v for k, v in r.items()} for r in rows]
        typer.echo(json.dumps(clean, indent=2))
    else:
        for row in rows:
            reason = f"\tnot applicable: {row['nan_reason']}" if "nan_reason" in row else ""
            typer.echo(f"{row['score']:.4f}\t{row['image']}{reason}")
