"""Simple emotion images drawn with PIL: faces and scenes of positive or negative valence.

They are cartoons, deliberately: a smiling vs a frowning face (mouth curve, brows, a tear), a
sunny vs a stormy scene (sun and flowers vs dark clouds, rain and lightning). Colours, sizes
and positions vary with a seed, so a set of them is not one image repeated. They stand in for a
real image set in the modality-conflict experiment (:mod:`probe.vlm.conflict`); any folder of
the user's own images can replace them.

>>> img = draw("face", "negative", seed=3, size=64)
>>> img.size
(64, 64)
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Literal

Valence = Literal["positive", "negative"]
KINDS = ("face", "scene")
VALENCES: tuple[Valence, ...] = ("positive", "negative")


def draw(kind: str, valence: Valence, *, seed: int = 0, size: int = 224):
    """One image of ``kind`` (``face`` or ``scene``) with the given valence."""
    if kind not in _DRAW:
        raise ValueError(f"unknown image kind {kind!r}; choose from {', '.join(KINDS)}")
    if valence not in VALENCES:
        raise ValueError(f"valence must be one of {VALENCES}, not {valence!r}")
    return _DRAW[kind](valence == "positive", random.Random(f"{kind}-{valence}-{seed}"), size)


def _face(happy: bool, rng: random.Random, size: int):
    from PIL import Image, ImageDraw

    bg = tuple(rng.randint(170, 235) for _ in range(3))
    img = Image.new("RGB", (size, size), bg)
    d = ImageDraw.Draw(img)
    r = size * rng.uniform(0.36, 0.44)
    cx, cy = size / 2 + rng.uniform(-0.04, 0.04) * size, size / 2 + rng.uniform(-0.04, 0.04) * size
    skin = (rng.randint(225, 255), rng.randint(180, 215), rng.randint(60, 140))
    d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=skin, outline=(60, 40, 20),
              width=max(1, size // 60))
    w = max(2, size // 45)
    for side in (-1, 1):  # eyes and brows
        ex, ey = cx + side * r * 0.38, cy - r * 0.22
        d.ellipse([ex - r * 0.08, ey - r * 0.1, ex + r * 0.08, ey + r * 0.1], fill=(30, 20, 10))
        if happy:  # relaxed, arched brows
            d.arc([ex - r * 0.18, ey - r * 0.36, ex + r * 0.18, ey - r * 0.12], 200, 340,
                  fill=(50, 30, 10), width=w)
        else:  # sad brows rise towards the middle
            d.line([(ex - side * r * 0.18, ey - r * 0.34), (ex + side * r * 0.18, ey - r * 0.18)],
                   fill=(50, 30, 10), width=w)
    top, bottom = (0.05, 0.6) if happy else (0.35, 0.9)
    box = [cx - r * 0.5, cy + r * top, cx + r * 0.5, cy + r * bottom]
    d.arc(box, 20 if happy else 200, 160 if happy else 340, fill=(120, 20, 20), width=w + 1)
    if not happy:  # a tear
        tx, ty = cx + r * 0.38, cy
        d.ellipse([tx - r * 0.06, ty, tx + r * 0.06, ty + r * 0.2], fill=(80, 150, 255))
    return img


def _scene(sunny: bool, rng: random.Random, size: int):
    from PIL import Image, ImageDraw

    sky = (rng.randint(90, 140), rng.randint(170, 210), 255) if sunny else \
        tuple(rng.randint(45, 80) for _ in range(3))
    ground = (rng.randint(60, 110), rng.randint(170, 220), rng.randint(50, 90)) if sunny else \
        (rng.randint(70, 95), rng.randint(75, 100), rng.randint(70, 90))
    img = Image.new("RGB", (size, size), sky)
    d = ImageDraw.Draw(img)
    horizon = size * rng.uniform(0.6, 0.72)
    d.rectangle([0, horizon, size, size], fill=ground)
    if sunny:
        sr, sx, sy = size * rng.uniform(0.09, 0.13), size * rng.uniform(0.2, 0.8), size * 0.22
        d.ellipse([sx - sr, sy - sr, sx + sr, sy + sr], fill=(255, 220, 40))
        for _ in range(rng.randint(4, 8)):  # flowers
            fx, fy = rng.uniform(0, size), rng.uniform(horizon + 4, size - 4)
            c = rng.choice([(255, 80, 120), (255, 255, 255), (250, 200, 30), (200, 90, 255)])
            d.ellipse([fx - size / 40, fy - size / 40, fx + size / 40, fy + size / 40], fill=c)
        return img
    for _ in range(rng.randint(3, 5)):  # clouds
        x, y, r = rng.uniform(0, size), rng.uniform(0.05, 0.3) * size, size * rng.uniform(0.12, 0.2)
        d.ellipse([x - r, y - r / 2, x + r, y + r / 2], fill=(35, 35, 45))
    for _ in range(size // 6):  # rain
        x, y = rng.uniform(0, size), rng.uniform(0.3 * size, size)
        d.line([(x, y), (x - size / 40, y + size / 16)], fill=(150, 160, 190), width=1)
    x0 = rng.uniform(0.3, 0.7) * size  # lightning
    pts = [(x0, 0.3 * size), (x0 - size * 0.06, 0.45 * size), (x0 + size * 0.02, 0.45 * size),
           (x0 - size * 0.05, 0.62 * size)]
    d.line(pts, fill=(255, 255, 120), width=max(2, size // 50))
    return img


_DRAW: dict[str, Callable] = {"face": _face, "scene": _scene}


def write_images(out_dir: str | Path, *, per_cell: int = 4, size: int = 224,
                 kinds=KINDS) -> list[dict]:
    """Write ``per_cell`` images per kind x valence as PNGs; return their records.

    Records (also written to ``images.jsonl``): ``path`` (relative to ``out_dir``), ``kind``,
    ``valence``, ``seed``.
    """
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    records = []
    for kind in kinds:
        for valence in VALENCES:
            for seed in range(per_cell):
                rel = f"images/{kind}-{valence}-{seed}.png"
                draw(kind, valence, seed=seed, size=size).save(out / rel)
                records.append({"path": rel, "kind": kind, "valence": valence, "seed": seed})
    (out / "images.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return records


def user_images(folder: str | Path) -> list[dict]:
    """Records of a user's image set: ``folder/positive/*`` and ``folder/negative/*``."""
    root = Path(folder).expanduser()
    records = []
    for valence in VALENCES:
        sub = root / valence
        files = sorted(p for p in sub.glob("*") if p.suffix.lower() in
                       (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")) if sub.is_dir() else []
        if not files:
            raise ValueError(f"image folder {root} needs a '{valence}' subfolder with images "
                             f"(png, jpg, webp, ...): {sub} has none")
        records += [{"path": str(p.resolve()), "kind": "user", "valence": valence, "seed": i}
                    for i, p in enumerate(files)]
    return records
