"""Draw ``sample.png``: a few characters from several scripts, each in several renderings, from ``glyphs.npz``.

Why: to see at a glance that the renderings are legible, varied characters (not boxes or blanks). Pillow only.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for a plain checkout
from ntm_serve.data.glyphs import load_glyphs  # numpy only


def grid(images: np.ndarray, zoom: int = 3, gap: int = 2) -> Image.Image:
    """[rows, cols, h, w] floats in [0, 1] -> one picture, dark ink on white, grey gaps."""
    rows, cols, h, w = images.shape
    cell_h, cell_w = h * zoom + gap, w * zoom + gap
    out = np.full((rows * cell_h + gap, cols * cell_w + gap), 160, np.uint8)
    for r in range(rows):
        for c in range(cols):
            tile = np.kron(1.0 - images[r, c], np.ones((zoom, zoom)))
            y, x = gap + r * cell_h, gap + c * cell_w
            out[y : y + h * zoom, x : x + w * zoom] = np.rint(tile * 255).astype(np.uint8)
    return Image.fromarray(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("sample.png"))
    parser.add_argument("--scripts", type=int, default=12, help="how many scripts (spread over the list)")
    parser.add_argument("--chars", type=int, default=3, help="characters per script (in a row)")
    parser.add_argument("--renderings", type=int, default=6)
    parser.add_argument("--all", action="store_true", help="every script, for checking, not the shipped picture")
    args = parser.parse_args()
    g = load_glyphs(args.data)
    n_scripts = len(g.script_names)
    if args.all:
        picks = list(range(n_scripts))
    else:  # half background, half evaluation scripts, spread over each list
        picks = []
        for split, n in ((0, args.scripts - args.scripts // 2), (1, args.scripts // 2)):
            ids = np.flatnonzero(g.script_split == split)
            picks += ids[np.linspace(0, len(ids) - 1, n).round().astype(int)].tolist()
    rows, labels = [], []
    for s in picks:
        idx = np.flatnonzero(g.script == s)
        chosen = idx[np.linspace(0, len(idx) - 1, args.chars).round().astype(int)]
        rows.append(np.concatenate([g.images[i, : args.renderings] for i in chosen]))
        split = "evaluation" if g.script_split[s] else "background"
        labels.append(f"{g.script_names[s]} ({split})")
    body = grid(np.stack(rows))
    # a dark bar between characters: each run of ``renderings`` cells is one character
    cell_w = body.width // (args.chars * args.renderings)
    draw = ImageDraw.Draw(body)
    for c in range(1, args.chars):
        x = c * args.renderings * cell_w
        draw.rectangle((x - 1, 0, x + 1, body.height), fill=0)
    label_w = 150
    img = Image.new("L", (body.width + label_w, body.height), 255)
    img.paste(body, (label_w, 0))
    draw = ImageDraw.Draw(img)
    cell_h = body.height / len(rows)
    for r, text in enumerate(labels):
        draw.text((4, int(r * cell_h + cell_h / 2 - 5)), text, fill=0)
    img.save(args.out)
    print(f"wrote {args.out} ({len(rows)} scripts x {args.chars} characters x {args.renderings} renderings)")


if __name__ == "__main__":
    main()
