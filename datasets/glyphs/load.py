"""Load the glyphs data set (``glyphs.npz``, made by ``make_glyphs.py``) with numpy only: no fonts needed.

Why a loader: training, tests and CI read the shipped file; this keeps them away from its layout and gives
images as float32 in [0, 1] (ink = 1) with the background/evaluation split by script ready to use.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_PATH = Path(__file__).with_name("glyphs.npz")


@dataclass(frozen=True)
class GlyphSet:
    """Characters x renderings of 20x20 images, with the script of each character and the script split."""

    images: np.ndarray  # float32 [C, R, 20, 20] in [0, 1], ink = 1
    script: np.ndarray  # int [C]: index into script_names
    codepoints: np.ndarray  # int [C]
    char_names: np.ndarray  # str [C]: Unicode character names
    script_names: np.ndarray  # str [S]
    script_split: np.ndarray  # int8 [S]: 0 background (training), 1 evaluation (held out)
    background: np.ndarray  # bool [C]: the character's script is a background script
    evaluation: np.ndarray  # bool [C]: the character's script is an evaluation script
    font_index: np.ndarray  # int [C, R]: index into fonts, the font each rendering came from
    fonts: np.ndarray  # str [F]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def n_characters(self) -> int:
        return int(self.images.shape[0])

    @property
    def n_renderings(self) -> int:
        return int(self.images.shape[1])

    def subset(self, mask: np.ndarray) -> GlyphSet:
        """The characters where ``mask`` is true (script tables kept whole, so script ids stay valid)."""
        return GlyphSet(
            images=self.images[mask],
            script=self.script[mask],
            codepoints=self.codepoints[mask],
            char_names=self.char_names[mask],
            script_names=self.script_names,
            script_split=self.script_split,
            background=self.background[mask],
            evaluation=self.evaluation[mask],
            font_index=self.font_index[mask],
            fonts=self.fonts,
            meta=self.meta,
        )


def load_glyphs(path: str | Path | None = None) -> GlyphSet:
    """Read ``glyphs.npz`` (default: the one beside this file)."""
    with np.load(Path(path) if path is not None else DEFAULT_PATH, allow_pickle=False) as z:
        raw = z["images"]
        images = raw.astype(np.float32)
        if raw.dtype == np.uint8:
            images /= 255.0
        script = z["script"].astype(np.int64)
        split = z["split"].astype(np.int8)
        return GlyphSet(
            images=images,
            script=script,
            codepoints=z["codepoints"].astype(np.int64),
            char_names=z["char_names"],
            script_names=z["scripts"],
            script_split=split,
            background=split[script] == 0,
            evaluation=split[script] == 1,
            font_index=z["font_index"].astype(np.int64),
            fonts=z["fonts"],
            meta=json.loads(str(z["meta"])) if "meta" in z.files else {},
        )


if __name__ == "__main__":
    g = load_glyphs()
    print(f"{g.n_characters} characters x {g.n_renderings} renderings, {len(g.script_names)} scripts; "
          f"background {int(g.background.sum())} characters, evaluation {int(g.evaluation.sum())}")
