"""The glyphs data set (datasets/glyphs/glyphs.npz, made by datasets/glyphs/make_glyphs.py), read with numpy only.

Why a loader in the package: training, the one-shot tasks, tests, CI and the data set's own scripts read the shipped
file through this one module, which keeps them away from its layout and gives images as float32 in [0, 1]
(ink = 1) with the background/evaluation split by script ready to use. No fonts are needed.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# The repository's copy (the package is installed editable from the repo); NTM_GLYPHS names another file.
DEFAULT_PATH = Path(__file__).resolve().parents[2] / "datasets" / "glyphs" / "glyphs.npz"
PATH_VARIABLE = "NTM_GLYPHS"
SIDE = 20  # images are SIDE x SIDE
PIXELS = SIDE * SIDE


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

    def split(self, name: str) -> GlyphSet:
        """The "background" (training) or "evaluation" (held-out) characters."""
        if name not in ("background", "evaluation"):
            raise ValueError(f"split must be 'background' or 'evaluation', got {name!r}")
        return self.subset(self.background if name == "background" else self.evaluation)

    def split_scripts(self, name: str) -> list[str]:
        """The names of the scripts in a split, in the data set's order."""
        code = {"background": 0, "evaluation": 1}[name]
        return [str(s) for s, k in zip(self.script_names, self.script_split, strict=True) if k == code]


def glyphs_path(path: str | Path | None = None) -> Path:
    """`path`, else $NTM_GLYPHS, else the repository's datasets/glyphs/glyphs.npz."""
    if path is not None:
        return Path(path)
    return Path(os.environ.get(PATH_VARIABLE) or DEFAULT_PATH)


def load_glyphs(path: str | Path | None = None) -> GlyphSet:
    """Read ``glyphs.npz`` (default: `glyphs_path()`); a missing file is named with how to get it."""
    where = glyphs_path(path)
    if not where.is_file():
        raise FileNotFoundError(f"glyphs data set not found at {where}: it ships in the repository as "
                                f"datasets/glyphs/glyphs.npz (set ${PATH_VARIABLE} to use another copy)")
    with np.load(where, allow_pickle=False) as z:
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


def main() -> None:
    g = load_glyphs()
    print(f"{g.n_characters} characters x {g.n_renderings} renderings, {len(g.script_names)} scripts; "
          f"background {int(g.background.sum())} characters, evaluation {int(g.evaluation.sum())}")


if __name__ == "__main__":
    main()
