"""The glyphs data set (datasets/glyphs/glyphs.npz, made by datasets/glyphs/make_glyphs.py), read with numpy only.

glyphs_extra.npz beside it holds more scripts, all background (training) ones, apart so that glyphs.npz and its
split stay as the models trained on it saw them: `load_glyphs(extra=True)` joins the two.

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
EXTRA_NAME = "glyphs_extra.npz"  # beside glyphs.npz (wherever $NTM_GLYPHS puts it)
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

    def joined(self, other: GlyphSet) -> GlyphSet:
        """This set and `other`'s characters after it (other's script and font ids moved past this one's)."""
        if other.images.shape[1:] != self.images.shape[1:]:
            raise ValueError(f"cannot join glyph sets of shapes {self.images.shape} and {other.images.shape}")
        if set(other.script_names.tolist()) & set(self.script_names.tolist()):
            raise ValueError("the glyph sets to join share scripts")
        return GlyphSet(
            images=np.concatenate([self.images, other.images]),
            script=np.concatenate([self.script, other.script + len(self.script_names)]),
            codepoints=np.concatenate([self.codepoints, other.codepoints]),
            char_names=np.concatenate([self.char_names, other.char_names]),
            script_names=np.concatenate([self.script_names, other.script_names]),
            script_split=np.concatenate([self.script_split, other.script_split]),
            background=np.concatenate([self.background, other.background]),
            evaluation=np.concatenate([self.evaluation, other.evaluation]),
            font_index=np.concatenate([self.font_index, other.font_index + len(self.fonts)]),
            fonts=np.concatenate([self.fonts, other.fonts]),
            meta={**self.meta, "extra": other.meta},
        )

    def split_scripts(self, name: str) -> list[str]:
        """The names of the scripts in a split, in the data set's order."""
        code = {"background": 0, "evaluation": 1}[name]
        return [str(s) for s, k in zip(self.script_names, self.script_split, strict=True) if k == code]


def glyphs_path(path: str | Path | None = None) -> Path:
    """`path`, else $NTM_GLYPHS, else the repository's datasets/glyphs/glyphs.npz."""
    if path is not None:
        return Path(path)
    return Path(os.environ.get(PATH_VARIABLE) or DEFAULT_PATH)


def extra_path(path: str | Path | None = None) -> Path:
    """glyphs_extra.npz beside the glyphs.npz that `glyphs_path(path)` names."""
    return glyphs_path(path).with_name(EXTRA_NAME)


def load_glyphs(path: str | Path | None = None, extra: bool = False) -> GlyphSet:
    """Read ``glyphs.npz`` (default: `glyphs_path()`), and with `extra` the more background scripts of
    glyphs_extra.npz beside it; a missing file is named with how to get it."""
    base = _read(glyphs_path(path))
    return base.joined(_read(extra_path(path))) if extra else base


def _read(where: Path) -> GlyphSet:
    if not where.is_file():
        raise FileNotFoundError(f"glyphs data set not found at {where}: it ships in the repository as "
                                f"datasets/glyphs/{where.name} (set ${PATH_VARIABLE} to use another copy of "
                                "glyphs.npz; glyphs_extra.npz is read from beside it)")
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
    for extra in (False, True):
        g = load_glyphs(extra=extra)
        print(f"{'with' if extra else 'without'} {EXTRA_NAME}: {g.n_characters} characters x {g.n_renderings} "
              f"renderings, {len(g.script_names)} scripts; background {int(g.background.sum())} characters, "
              f"evaluation {int(g.evaluation.sum())}")


if __name__ == "__main__":
    main()
