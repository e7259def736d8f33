"""Render an Omniglot-like one-shot data set ("glyphs") from Debian's Noto fonts.

Why this exists: Santoro et al. (2016) train memory-augmented networks on Omniglot (1,623 hand-drawn characters
from 50 alphabets, 20 drawers each, down-sampled to 20x20). Omniglot cannot be fetched here, so we build a data
set with the same shape from freely licensed fonts: characters of many writing systems, each rendered 20 times
by a different "drawer". A drawer is a style shared across one script's characters (font family, weight, stroke
thickness, slant, size), and every rendering adds its own rotation, shear, scale, position jitter and a smooth
elastic wobble, so the 20 renderings of one character differ as handwriting does and pixel matching is not
enough to recognise them.

Output (one compressed ``.npz``, read by ``ntm_serve/data/glyphs.py`` without fonts):
  images      uint8 [C, 20, 20, 20]  characters x renderings x 20 x 20, ink = 255, background = 0
  script      int16 [C]              index into ``scripts``
  codepoints  int32 [C]
  char_names  str   [C]              Unicode names
  scripts     str   [S]
  split       int8  [S]              0 = background (training), 1 = evaluation (held out)
  font_index  int16 [C, 20]          index into ``fonts``: the font file each rendering came from
  fonts       str   [F]              font file names; ``font_packages`` [F] "package=version" of each,
                                     ``font_versions`` [F] the font's own version string
  meta        str   []               JSON: generator version, seed, library versions, parameters, command

Run: ``python datasets/glyphs/make_glyphs.py`` (glyphs.npz) and ``... --part extra`` (glyphs_extra.npz: more
background scripts, none of their characters like a held-out one). Needs fonts-noto-core and fonts-noto-extra;
deterministic for a seed given the same fonts, Pillow and FreeType.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import unicodedata
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import fontTools
import numpy as np
import PIL
from fontTools.ttLib import TTFont
from PIL import Image, ImageDraw, ImageFont, features

GENERATOR_VERSION = "1.0.0"
DEFAULT_SEED = 20160519  # Santoro et al., arXiv 1605.06065
FONT_DIR = Path("/usr/share/fonts/truetype/noto")
OUT_SIZE = 20  # Santoro et al. down-sample Omniglot to 20x20
SUPERSAMPLE = 5  # work on a 100x100 canvas, then average 5x5 blocks: anti-aliased like a down-sampled drawing
CANVAS = OUT_SIZE * SUPERSAMPLE
RENDER_PX = 128  # font size of the high-resolution glyph that is warped onto the canvas
N_DRAWERS = 20  # Omniglot has 20 drawers per character
MAX_PER_SCRIPT = 34  # Omniglot alphabets have 14-55 characters (1,623 in 50)
BACKGROUND_FRACTION = 0.6
DEDUP_RMS = 0.06  # two characters whose canonical renderings differ by less than this (RMS, [0,1]) are one
# Weights and widths a drawer may use. Thin/ExtraLight and ExtraCondensed vanish or blur at 20x20.
STYLES = ("Light", "Regular", "Medium", "SemiBold", "Bold", "ExtraBold", "SemiCondensed", "Condensed",
          "SemiCondensedBold", "CondensedBold", "Black")
LETTERS = frozenset({"Lu", "Ll", "Lo"})


@dataclass(frozen=True)
class ScriptSpec:
    """A writing system: where its letters are in Unicode and which Noto families draw it."""

    name: str
    families: tuple[str, ...]
    ranges: tuple[tuple[int, int], ...]  # inclusive code point ranges
    categories: frozenset[str] = LETTERS


def _s(name: str, families: str, *ranges: tuple[int, int], cats: frozenset[str] = LETTERS) -> ScriptSpec:
    return ScriptSpec(name, tuple(families.split()), tuple(ranges), cats)


# One case only for bicameral scripts: upper and lower case of a letter are one character to a reader.
# Left out after a look at the renderings: Ogham, Batak and Cham (long flat glyphs that shrink to a few rows at
# 20x20) and Gothic, Old Italic, Coptic and Tai Le (mostly shapes of Greek or Latin letters over again).
SCRIPTS: tuple[ScriptSpec, ...] = (
    _s("Latin", "NotoSans NotoSerif", (0x61, 0x7A)),
    _s("Greek", "NotoSans NotoSerif", (0x3B1, 0x3C9)),
    _s("Cyrillic", "NotoSans NotoSerif", (0x430, 0x45F)),
    _s("Armenian", "NotoSansArmenian NotoSerifArmenian", (0x561, 0x586)),
    _s("Georgian", "NotoSansGeorgian NotoSerifGeorgian", (0x10D0, 0x10F0)),
    _s("Hebrew", "NotoSansHebrew NotoSerifHebrew NotoRashiHebrew", (0x5D0, 0x5EA)),
    _s("Arabic", "NotoSansArabic NotoNaskhArabic NotoKufiArabic", (0x620, 0x64A)),
    _s("Syriac", "NotoSansSyriac", (0x710, 0x72F)),
    _s("Thaana", "NotoSansThaana", (0x780, 0x7A5)),
    _s("NKo", "NotoSansNKo", (0x7CA, 0x7EA)),
    _s("Samaritan", "NotoSansSamaritan", (0x800, 0x815)),
    _s("Devanagari", "NotoSansDevanagari NotoSerifDevanagari", (0x904, 0x939)),
    _s("Bengali", "NotoSansBengali NotoSerifBengali", (0x985, 0x9B9)),
    _s("Gurmukhi", "NotoSansGurmukhi NotoSerifGurmukhi", (0xA05, 0xA39)),
    _s("Gujarati", "NotoSansGujarati NotoSerifGujarati", (0xA85, 0xAB9)),
    _s("Oriya", "NotoSansOriya", (0xB05, 0xB39)),
    _s("Tamil", "NotoSansTamil NotoSerifTamil", (0xB85, 0xBB9)),
    _s("Telugu", "NotoSansTelugu NotoSerifTelugu", (0xC05, 0xC39)),
    _s("Kannada", "NotoSansKannada NotoSerifKannada", (0xC85, 0xCB9)),
    _s("Malayalam", "NotoSansMalayalam NotoSerifMalayalam", (0xD05, 0xD3A)),
    _s("Sinhala", "NotoSansSinhala NotoSerifSinhala", (0xD85, 0xDC6)),
    _s("Thai", "NotoSansThai NotoSerifThai NotoLoopedThai", (0xE01, 0xE2E)),
    _s("Lao", "NotoSansLao NotoSerifLao NotoLoopedLao", (0xE81, 0xEAE)),
    _s("Tibetan", "NotoSerifTibetan", (0xF40, 0xF6C)),
    _s("Myanmar", "NotoSansMyanmar NotoSerifMyanmar", (0x1000, 0x102A)),
    _s("Ethiopic", "NotoSansEthiopic NotoSerifEthiopic", (0x1200, 0x135A)),
    _s("Cherokee", "NotoSansCherokee", (0x13A0, 0x13F5)),
    _s("Canadian Aboriginal", "NotoSansCanadianAboriginal", (0x1401, 0x166C)),
    _s("Runic", "NotoSansRunic", (0x16A0, 0x16EA)),
    _s("Khmer", "NotoSansKhmer NotoSerifKhmer", (0x1780, 0x17B3)),
    _s("Mongolian", "NotoSansMongolian", (0x1820, 0x1878)),
    _s("Limbu", "NotoSansLimbu", (0x1900, 0x191E)),
    _s("New Tai Lue", "NotoSansNewTaiLue", (0x1980, 0x19AB)),
    _s("Balinese", "NotoSansBalinese NotoSerifBalinese", (0x1B05, 0x1B33)),
    _s("Sundanese", "NotoSansSundanese", (0x1B83, 0x1BA0)),
    _s("Lepcha", "NotoSansLepcha", (0x1C00, 0x1C23)),
    _s("Ol Chiki", "NotoSansOlChiki", (0x1C5A, 0x1C77)),
    _s("Glagolitic", "NotoSansGlagolitic", (0x2C30, 0x2C5E)),
    _s("Tifinagh", "NotoSansTifinagh", (0x2D30, 0x2D67)),
    _s("Vai", "NotoSansVai", (0xA500, 0xA60B)),
    _s("Yi", "NotoSansYi", (0xA000, 0xA48C)),
    _s("Bamum", "NotoSansBamum", (0xA6A0, 0xA6E5)),
    _s("Javanese", "NotoSansJavanese", (0xA984, 0xA9B2)),
    _s("Meetei Mayek", "NotoSansMeeteiMayek", (0xABC0, 0xABE2)),
    _s("Phoenician", "NotoSansPhoenician", (0x10900, 0x10915)),
    _s("Old Turkic", "NotoSansOldTurkic", (0x10C00, 0x10C48)),
    _s("Linear B", "NotoSansLinearB", (0x10000, 0x1005D)),
    _s("Osmanya", "NotoSansOsmanya", (0x10480, 0x1049D)),
    _s("Adlam", "NotoSansAdlam", (0x1E922, 0x1E943)),
)


# More background scripts, shipped apart in glyphs_extra.npz (`--part extra`) so that glyphs.npz, its split and
# the models trained on it stay as they are: every one of these is a training script, and a character that looks
# like one of an evaluation script (EXTRA_HOLDOUT_RMS, in any pair of the two scripts' regular fonts) is dropped,
# so held-out figures stay held out. Left out: scripts of thousands of signs (Tangut, Nushu, Cuneiform, Egyptian
# and Anatolian hieroglyphs, SignWriting: illegible at 20x20) and other fonts of an evaluation script (the
# Tifinagh variants).
EXTRA_SCRIPTS: tuple[ScriptSpec, ...] = (
    _s("Mandaic", "NotoSansMandaic", (0x840, 0x858)),
    _s("Tagalog", "NotoSansTagalog", (0x1700, 0x1711)),
    _s("Hanunoo", "NotoSansHanunoo", (0x1720, 0x1731)),
    _s("Buhid", "NotoSansBuhid", (0x1740, 0x1751)),
    _s("Tagbanwa", "NotoSansTagbanwa", (0x1760, 0x1770)),
    _s("Buginese", "NotoSansBuginese", (0x1A00, 0x1A16)),
    _s("Tai Tham", "NotoSansTaiTham", (0x1A20, 0x1A54)),
    _s("Lisu", "NotoSansLisu", (0xA4D0, 0xA4F7)),
    _s("Syloti Nagri", "NotoSansSylotiNagri", (0xA800, 0xA822)),
    _s("Phags Pa", "NotoSansPhagsPa", (0xA840, 0xA873)),
    _s("Saurashtra", "NotoSansSaurashtra", (0xA882, 0xA8B3)),
    _s("Kayah Li", "NotoSansKayahLi", (0xA90A, 0xA925)),
    _s("Rejang", "NotoSansRejang", (0xA930, 0xA946)),
    _s("Tai Viet", "NotoSansTaiViet", (0xAA80, 0xAAAF)),
    _s("Lycian", "NotoSansLycian", (0x10280, 0x1029C)),
    _s("Carian", "NotoSansCarian", (0x102A0, 0x102D0)),
    _s("Old Permic", "NotoSansOldPermic", (0x10350, 0x10375)),
    _s("Ugaritic", "NotoSansUgaritic", (0x10380, 0x1039D)),
    _s("Old Persian", "NotoSansOldPersian", (0x103A0, 0x103C3)),
    _s("Deseret", "NotoSansDeseret", (0x10428, 0x1044F)),
    _s("Shavian", "NotoSansShavian", (0x10450, 0x1047F)),
    _s("Osage", "NotoSansOsage", (0x104D8, 0x104FB)),
    _s("Elbasan", "NotoSansElbasan", (0x10500, 0x10527)),
    _s("Caucasian Albanian", "NotoSansCaucasianAlbanian", (0x10530, 0x10563)),
    _s("Linear A", "NotoSansLinearA", (0x10600, 0x10736)),
    _s("Cypriot", "NotoSansCypriot", (0x10800, 0x1083F)),
    _s("Imperial Aramaic", "NotoSansImperialAramaic", (0x10840, 0x10855)),
    _s("Palmyrene", "NotoSansPalmyrene", (0x10860, 0x10876)),
    _s("Nabataean", "NotoSansNabataean", (0x10880, 0x1089E)),
    _s("Hatran", "NotoSansHatran", (0x108E0, 0x108F5)),
    _s("Lydian", "NotoSansLydian", (0x10920, 0x10939)),
    _s("Meroitic", "NotoSansMeroitic", (0x10980, 0x109B7)),
    _s("Kharoshthi", "NotoSansKharoshthi", (0x10A10, 0x10A35)),
    _s("Old South Arabian", "NotoSansOldSouthArabian", (0x10A60, 0x10A7C)),
    _s("Old North Arabian", "NotoSansOldNorthArabian", (0x10A80, 0x10A9C)),
    _s("Manichaean", "NotoSansManichaean", (0x10AC0, 0x10AE4)),
    _s("Avestan", "NotoSansAvestan", (0x10B00, 0x10B35)),
    _s("Inscriptional Parthian", "NotoSansInscriptionalParthian", (0x10B40, 0x10B55)),
    _s("Inscriptional Pahlavi", "NotoSansInscriptionalPahlavi", (0x10B60, 0x10B72)),
    _s("Psalter Pahlavi", "NotoSansPsalterPahlavi", (0x10B80, 0x10B91)),
    _s("Old Hungarian", "NotoSansOldHungarian", (0x10CC0, 0x10CF2)),
    _s("Hanifi Rohingya", "NotoSansHanifiRohingya", (0x10D00, 0x10D23)),
    _s("Yezidi", "NotoSerifYezidi", (0x10E80, 0x10EA9)),
    _s("Old Sogdian", "NotoSansOldSogdian", (0x10F00, 0x10F1C)),
    _s("Sogdian", "NotoSansSogdian", (0x10F30, 0x10F45)),
    _s("Brahmi", "NotoSansBrahmi", (0x11003, 0x11037)),
    _s("Kaithi", "NotoSansKaithi", (0x11083, 0x110AF)),
    _s("Sora Sompeng", "NotoSansSoraSompeng", (0x110D0, 0x110E8)),
    _s("Chakma", "NotoSansChakma", (0x11103, 0x11126)),
    _s("Mahajani", "NotoSansMahajani", (0x11150, 0x11172)),
    _s("Sharada", "NotoSansSharada", (0x11183, 0x111B2)),
    _s("Khojki", "NotoSansKhojki", (0x11200, 0x1122B)),
    _s("Multani", "NotoSansMultani", (0x11280, 0x112A8)),
    _s("Khudawadi", "NotoSansKhudawadi", (0x112B0, 0x112DE)),
    _s("Grantha", "NotoSansGrantha NotoSerifGrantha", (0x11305, 0x11339)),
    _s("Newa", "NotoSansNewa", (0x11400, 0x11434)),
    _s("Tirhuta", "NotoSansTirhuta", (0x11481, 0x114AF)),
    _s("Siddham", "NotoSansSiddham", (0x11580, 0x115AE)),
    _s("Modi", "NotoSansModi", (0x11600, 0x1162F)),
    _s("Takri", "NotoSansTakri", (0x11680, 0x116AA)),
    _s("Ahom", "NotoSerifAhom", (0x11700, 0x1171A)),
    _s("Dogra", "NotoSerifDogra", (0x11800, 0x1182B)),
    _s("Warang Citi", "NotoSansWarangCiti", (0x118C0, 0x118DF)),
    _s("Zanabazar Square", "NotoSansZanabazarSquare", (0x11A00, 0x11A32)),
    _s("Soyombo", "NotoSansSoyombo", (0x11A50, 0x11A89)),
    _s("Pau Cin Hau", "NotoSansPauCinHau", (0x11AC0, 0x11AF8)),
    _s("Bhaiksuki", "NotoSansBhaiksuki", (0x11C00, 0x11C2E)),
    _s("Marchen", "NotoSansMarchen", (0x11C72, 0x11C8F)),
    _s("Masaram Gondi", "NotoSansMasaramGondi", (0x11D00, 0x11D30)),
    _s("Gunjala Gondi", "NotoSansGunjalaGondi", (0x11D60, 0x11D89)),
    _s("Bassa Vah", "NotoSansBassaVah", (0x16AD0, 0x16AED)),
    _s("Mro", "NotoSansMro", (0x16A40, 0x16A5E)),
    _s("Pahawh Hmong", "NotoSansPahawhHmong", (0x16B00, 0x16B2F)),
    _s("Medefaidrin", "NotoSansMedefaidrin", (0x16E60, 0x16E7F)),
    _s("Miao", "NotoSansMiao", (0x16F00, 0x16F4A)),
    _s("Duployan", "NotoSansDuployan", (0x1BC00, 0x1BC6A)),
    _s("Nyiakeng Puachue Hmong", "NotoSerifNyiakengPuachueHmong", (0x1E100, 0x1E12C)),
    _s("Wancho", "NotoSansWancho", (0x1E2C0, 0x1E2EB)),
    _s("Mende Kikakui", "NotoSansMendeKikakui", (0x1E800, 0x1E8C4)),
)
EXTRA_HOLDOUT_RMS = 0.10  # stricter than DEDUP_RMS: a background character must not pass for a held-out one

# ----------------------------------------------------------------------------------------------- fonts


def family_files(family: str, font_dir: Path = FONT_DIR) -> list[Path]:
    """The font files of a family in the weights/widths of STYLES, Regular first (the canonical style)."""
    files = [font_dir / f"{family}-{style}.ttf" for style in STYLES]
    files = [f for f in files if f.is_file()]
    files.sort(key=lambda f: not f.stem.endswith("-Regular"))
    return files


@cache
def font_cmap(path: Path) -> frozenset[int]:
    """Code points the font really maps to a glyph other than .notdef (Pillow would draw tofu for the rest)."""
    with TTFont(str(path), lazy=True) as font:
        cmap = font.getBestCmap() or {}
    return frozenset(cp for cp, glyph in cmap.items() if glyph != ".notdef")


def font_version(path: Path) -> str:
    """The font's own version string (name ID 5), for the record beside its Debian package version."""
    with TTFont(str(path), lazy=True) as font:
        name = font["name"].getDebugName(5)
    return name.split(";")[0].strip() if name else "?"


@cache
def load_font(path: Path) -> ImageFont.FreeTypeFont:
    """Basic layout: isolated characters need no shaping, and it keeps the output independent of libraqm."""
    return ImageFont.truetype(str(path), RENDER_PX, layout_engine=ImageFont.Layout.BASIC)


def render_glyph(path: Path, char: str) -> np.ndarray:
    """The character's ink, float32 in [0, 1], cropped to its bounding box (empty array if nothing is drawn)."""
    font = load_font(path)
    left, top, right, bottom = font.getbbox(char)
    if right <= left or bottom <= top:
        return np.zeros((0, 0), np.float32)
    pad = 4
    img = Image.new("L", (right - left + 2 * pad, bottom - top + 2 * pad), 0)
    ImageDraw.Draw(img).text((pad - left, pad - top), char, fill=255, font=font)
    ink = np.asarray(img, np.float32) / 255.0
    rows = np.flatnonzero(ink.max(axis=1) > 0.1)
    cols = np.flatnonzero(ink.max(axis=0) > 0.1)
    if rows.size == 0:
        return np.zeros((0, 0), np.float32)
    return np.ascontiguousarray(ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1])


# ------------------------------------------------------------------------------------ pure transforms


def affine_fit(glyph_shape: tuple[int, int], extent: float, rotation: float, shear: float, aspect: float,
               shift: tuple[float, float], canvas: int = CANVAS, margin: float = 3.0) -> np.ndarray:
    """Matrix (3x3, homogeneous x,y) taking glyph pixel coordinates to canvas coordinates.

    The glyph's longer side becomes ``extent`` canvas pixels (so a character is drawn at a similar size whatever
    its size in the font, as a person would draw it in a box), then it is stretched by ``aspect``, sheared,
    rotated by ``rotation`` radians, centred and moved by ``shift``. If the result would leave the canvas it is
    shrunk and the shift clamped, so no ink is cut off.
    """
    h, w = glyph_shape
    centre = np.array([[1, 0, -w / 2], [0, 1, -h / 2], [0, 0, 1]])
    s = extent / max(h, w)
    scale = np.diag([s * math.sqrt(aspect), s / math.sqrt(aspect), 1.0])
    shear_m = np.array([[1, shear, 0], [0, 1, 0], [0, 0, 1]])
    c, si = math.cos(rotation), math.sin(rotation)
    rot = np.array([[c, -si, 0], [si, c, 0], [0, 0, 1]])
    m = rot @ shear_m @ scale @ centre
    corners = m @ np.array([[0, w, w, 0], [0, 0, h, h], [1, 1, 1, 1]], dtype=float)
    half = np.abs(corners[:2]).max(axis=1)  # half-extent in x and y around the canvas centre
    room = canvas / 2 - margin
    shrink = min(1.0, room / max(half.max(), 1e-9))
    m = np.diag([shrink, shrink, 1.0]) @ m
    half = half * shrink
    dx = float(np.clip(shift[0], -(room - half[0]), room - half[0]))
    dy = float(np.clip(shift[1], -(room - half[1]), room - half[1]))
    return np.array([[1, 0, canvas / 2 + dx], [0, 1, canvas / 2 + dy], [0, 0, 1]]) @ m


def smooth_field(noise: np.ndarray, size: int) -> np.ndarray:
    """Bilinearly up-sample a coarse [k, k] grid of random displacements to a smooth [size, size] field."""
    k = noise.shape[0]
    t = np.linspace(0, k - 1, size)
    i0 = np.minimum(np.floor(t).astype(int), k - 2)
    f = t - i0
    rows = noise[i0] * (1 - f)[:, None] + noise[i0 + 1] * f[:, None]
    return rows[:, i0] * (1 - f)[None, :] + rows[:, i0 + 1] * f[None, :]


def bilinear_sample(img: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Sample ``img`` at fractional pixel centres (ys, xs); zero outside it."""
    padded = np.pad(img, 1)
    y = ys + 1.0 - 0.5
    x = xs + 1.0 - 0.5
    y0 = np.floor(y).astype(int)
    x0 = np.floor(x).astype(int)
    fy = y - y0
    fx = x - x0
    h, w = padded.shape
    out = np.zeros(ys.shape, np.float32)
    for oy, wy in ((0, 1 - fy), (1, fy)):
        for ox, wx in ((0, 1 - fx), (1, fx)):
            yy = y0 + oy
            xx = x0 + ox
            ok = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
            vals = np.where(ok, padded[np.clip(yy, 0, h - 1), np.clip(xx, 0, w - 1)], 0.0)
            out += (wy * wx * vals).astype(np.float32)
    return out


def warp(glyph: np.ndarray, matrix: np.ndarray, displacement: np.ndarray | None, canvas: int = CANVAS) -> np.ndarray:
    """Draw the glyph on the canvas through ``matrix``, each canvas pixel first moved by ``displacement`` [2,H,W]."""
    yy, xx = np.mgrid[0:canvas, 0:canvas].astype(np.float64) + 0.5
    if displacement is not None:
        xx = xx + displacement[0]
        yy = yy + displacement[1]
    inv = np.linalg.inv(matrix)
    gx = inv[0, 0] * xx + inv[0, 1] * yy + inv[0, 2]
    gy = inv[1, 0] * xx + inv[1, 1] * yy + inv[1, 2]
    return bilinear_sample(glyph, gy, gx)


def morph(img: np.ndarray, radius: int) -> np.ndarray:
    """Thicken (radius > 0, dilation) or thin (radius < 0, erosion) strokes with a disc, like a broader pen."""
    if radius == 0:
        return img
    r = abs(radius)
    op = np.maximum if radius > 0 else np.minimum
    padded = np.pad(img, r, constant_values=0.0)
    out = img.copy()
    h, w = img.shape
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            if dy * dy + dx * dx <= r * r + r:  # a disc, slightly fuller than Euclidean
                out = op(out, padded[r + dy : r + dy + h, r + dx : r + dx + w])
    return out


def downsample(img: np.ndarray, factor: int = SUPERSAMPLE) -> np.ndarray:
    """Average factor x factor blocks: the area-weighted down-sampling a scanner or a resize of Omniglot does."""
    h, w = img.shape
    return img.reshape(h // factor, factor, w // factor, factor).mean(axis=(1, 3))


def to_uint8(img: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------------ drawers


@dataclass(frozen=True)
class Drawer:
    """One "person": a style shared by all renderings of one script that this drawer makes."""

    font: Path
    pen: int  # morphology radius on the 100x100 canvas: <0 thinner strokes, >0 thicker
    slant: float  # habitual shear
    size: float  # habitual fraction of the box the character fills
    aspect: float  # habitual width/height stretch


def make_drawers(fonts: Sequence[Path], rng: np.random.Generator, n: int = N_DRAWERS) -> list[Drawer]:
    """n drawers for one script. Fonts are dealt round-robin over a shuffled pool, so every font is used."""
    order = rng.permutation(len(fonts))
    drawers = []
    for i in range(n):
        font = fonts[order[i % len(fonts)]]
        heavy = any(w in font.stem for w in ("Bold", "Black"))
        light = font.stem.endswith("Light")
        pens = [-1, 0, 0] if heavy else [0, 1, 2] if light else [0, 0, 1, 1, 2]
        drawers.append(Drawer(font=font, pen=int(rng.choice(pens)), slant=float(rng.normal(0, 0.15)),
                              size=float(rng.uniform(0.62, 0.86)), aspect=float(math.exp(rng.normal(0, 0.1)))))
    return drawers


def render_instance(glyph: np.ndarray, drawer: Drawer, rng: np.random.Generator) -> np.ndarray:
    """One rendering of a character by a drawer, with this instance's own jitter, as uint8 [20, 20]."""
    extent = CANVAS * drawer.size * math.exp(rng.normal(0, 0.08))
    rotation = math.radians(float(rng.normal(0, 7.0)))
    shear = drawer.slant + float(rng.normal(0, 0.08))
    aspect = drawer.aspect * math.exp(rng.normal(0, 0.06))
    shift = (float(rng.normal(0, 0.07 * CANVAS)), float(rng.normal(0, 0.07 * CANVAS)))
    matrix = affine_fit(glyph.shape, extent, rotation, shear, aspect, shift)
    coarse = rng.normal(0, 0.035 * CANVAS, size=(2, 5, 5))  # wobble: ~0.7 px at 20x20, smooth over ~5 px
    displacement = np.stack([smooth_field(coarse[0], CANVAS), smooth_field(coarse[1], CANVAS)])
    img = morph(warp(glyph, matrix, displacement), drawer.pen)
    return to_uint8(downsample(img))


def canonical(glyph: np.ndarray, size: int = 32) -> np.ndarray:
    """The glyph fitted to a box without jitter, for finding characters that look the same."""
    m = affine_fit(glyph.shape, size * 0.8, 0.0, 0.0, 1.0, (0.0, 0.0), canvas=size, margin=1.0)
    return warp(glyph, m, None, canvas=size)


# ------------------------------------------------------------------------------------ characters


def script_rng(seed: int, name: str, purpose: int) -> np.random.Generator:
    """A generator per script (and purpose): adding or removing a script leaves the others' renderings alone."""
    return np.random.default_rng([seed, zlib.crc32(name.encode()), purpose])


def candidates(spec: ScriptSpec, cmaps: Sequence[frozenset[int]]) -> list[int]:
    """Letters of the script that every family has, without precomposed ones (a base letter plus a mark)."""
    out = []
    for lo, hi in spec.ranges:
        for cp in range(lo, hi + 1):
            ch = chr(cp)
            if unicodedata.category(ch) not in spec.categories or unicodedata.decomposition(ch):
                continue
            if all(cp in cmap for cmap in cmaps):
                out.append(cp)
    return out


@dataclass(frozen=True)
class Avoid:
    """Characters another part of the data set must not resemble: their canonical images in their fonts."""

    images: np.ndarray  # float [K, 32*32]: one row per (character, regular font)
    codepoints: np.ndarray  # int [K]: the character of each row
    rms: float = EXTRA_HOLDOUT_RMS

    def resembles(self, imgs: np.ndarray) -> int | None:
        """The code point of an avoided character that one of `imgs` [families, 32*32] looks like, or None."""
        diffs = np.sqrt(((self.images[None] - imgs[:, None]) ** 2).mean(axis=2)).min(axis=0)  # [K]
        j = int(diffs.argmin())
        return int(self.codepoints[j]) if diffs[j] < self.rms else None


def held_out_characters(base: Path, seed: int) -> Avoid:
    """The evaluation characters of the shipped glyphs.npz, canonical in each of their script's regular fonts."""
    with np.load(base, allow_pickle=False) as z:
        scripts, split, script, cps = z["scripts"], z["split"], z["script"], z["codepoints"]
        if json.loads(str(z["meta"]))["seed"] != seed:
            raise SystemExit(f"{base} was made with another seed than {seed}")
    specs = {s.name: s for s in SCRIPTS}
    rows, owners = [], []
    for k, name in enumerate(scripts):
        if split[k] != 1:
            continue
        regulars = [family_files(f)[0] for f in specs[str(name)].families]
        for cp in cps[script == k]:
            for f in regulars:
                rows.append(canonical(render_glyph(f, chr(int(cp)))).ravel())
                owners.append(int(cp))
    return Avoid(np.stack(rows), np.array(owners))


def select_characters(spec: ScriptSpec, regulars: Sequence[Path], seed: int, limit: int = MAX_PER_SCRIPT,
                      avoid: Avoid | None = None) -> tuple[list[int], list[tuple[int, int]]]:
    """Characters to keep: drawn (not tofu, not empty) and unlike the others of the script in every family, and
    (given `avoid`) unlike every character it holds.

    Returns the kept code points (at most ``limit``, a seeded sample, in code point order) and the
    (dropped, kept-look-alike) pairs, for the record (an avoided character's pair names the one it resembles).
    """
    cps = candidates(spec, [font_cmap(f) for f in regulars])
    kept: list[int] = []
    kept_imgs: list[np.ndarray] = []  # [families, 32*32] per kept character
    dropped: list[tuple[int, int]] = []
    for cp in cps:
        glyphs = [render_glyph(f, chr(cp)) for f in regulars]
        if any(g.size == 0 or g.sum() < 20 for g in glyphs):
            continue
        imgs = np.stack([canonical(g).ravel() for g in glyphs])
        if avoid is not None and (like := avoid.resembles(imgs)) is not None:
            dropped.append((cp, like))
            continue
        if kept_imgs:
            # rms difference to each kept character, in the family where they look most alike
            diffs = np.sqrt(((np.stack(kept_imgs) - imgs[None]) ** 2).mean(axis=2)).min(axis=1)
            j = int(diffs.argmin())
            if diffs[j] < DEDUP_RMS:
                dropped.append((cp, kept[j]))
                continue
        kept.append(cp)
        kept_imgs.append(imgs)
    if len(kept) > limit:
        pick = script_rng(seed, spec.name, 1).choice(len(kept), size=limit, replace=False)
        kept = [kept[i] for i in sorted(pick)]
    return kept, dropped


# ------------------------------------------------------------------------------------ provenance


def package_versions(paths: Sequence[Path]) -> list[str]:
    """'package=version' of the Debian package that installed each font file."""
    out = subprocess.run(["dpkg", "-S", *map(str, paths)], capture_output=True, text=True, check=True).stdout
    owner = {}
    for line in out.splitlines():
        pkg, _, path = line.partition(": ")
        owner[path.strip()] = pkg.strip()
    versions = {}
    for pkg in sorted(set(owner.values())):
        versions[pkg] = subprocess.run(["dpkg-query", "-W", "-f=${Version}", pkg], capture_output=True,
                                       text=True, check=True).stdout.strip()
    return [f"{owner[str(p)]}={versions[owner[str(p)]]}" for p in paths]


def split_scripts(names: Sequence[str], seed: int, fraction: float = BACKGROUND_FRACTION) -> np.ndarray:
    """0 background / 1 evaluation per script: a seeded shuffle of the sorted names, the first ``fraction``."""
    order = np.random.default_rng([seed, 7]).permutation(sorted(names))
    n_bg = round(fraction * len(names))
    background = set(order[:n_bg].tolist())
    return np.array([0 if n in background else 1 for n in names], np.int8)


# ------------------------------------------------------------------------------------ main


def build(seed: int, scripts: Sequence[ScriptSpec] = SCRIPTS, log: bool = True,
          avoid: Avoid | None = None) -> dict[str, np.ndarray]:
    """Render the whole data set (or, with `avoid`, the extra part: every script background, no character like
    one of `avoid`); returns the arrays that go into the .npz."""
    images, script_ids, codepoints, font_ids = [], [], [], []
    used_scripts: list[str] = []
    fonts: list[Path] = []
    font_pos: dict[Path, int] = {}
    dropped_all: dict[str, list[str]] = {}
    for spec in scripts:
        pools = [family_files(f) for f in spec.families]
        if any(not p for p in pools):
            print(f"skip {spec.name}: missing font family", file=sys.stderr)
            continue
        regulars = [p[0] for p in pools]
        cps, dropped = select_characters(spec, regulars, seed, avoid=avoid)
        if dropped:
            dropped_all[spec.name] = [f"U+{a:04X}~U+{b:04X}" for a, b in dropped]
        if len(cps) < 10:
            print(f"skip {spec.name}: only {len(cps)} characters", file=sys.stderr)
            continue
        pool = [f for p in pools for f in p]
        drawers = make_drawers(pool, script_rng(seed, spec.name, 2))
        sid = len(used_scripts)
        used_scripts.append(spec.name)
        for cp in cps:
            rng = np.random.default_rng([seed, cp, 3])
            row, frow = [], []
            for d in drawers:
                row.append(render_instance(render_glyph(d.font, chr(cp)), d, rng))
                if d.font not in font_pos:
                    font_pos[d.font] = len(fonts)
                    fonts.append(d.font)
                frow.append(font_pos[d.font])
            images.append(np.stack(row))
            font_ids.append(frow)
            script_ids.append(sid)
            codepoints.append(cp)
        if log:
            print(f"{spec.name:22s} {len(cps):3d} characters, {len(pool):2d} font files, "
                  f"{len(dropped)} look-alikes dropped", file=sys.stderr)
        load_font.cache_clear()
    meta = {
        "generator": "datasets/glyphs/make_glyphs.py",
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "command": f"python datasets/glyphs/make_glyphs.py --seed {seed} --out datasets/glyphs/glyphs.npz",
        "image": f"{OUT_SIZE}x{OUT_SIZE} uint8, ink=255; rendered on {CANVAS}x{CANVAS}, {SUPERSAMPLE}x{SUPERSAMPLE} "
                 "block mean",
        "drawers_per_character": N_DRAWERS,
        "max_characters_per_script": MAX_PER_SCRIPT,
        "background_fraction": BACKGROUND_FRACTION,
        "dedup_rms": DEDUP_RMS,
        "look_alikes_dropped": dropped_all,
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "pillow": PIL.__version__,
        "freetype": features.version("freetype2"),
        "fonttools": fontTools.version,
        "licence": "Rendered from Noto fonts, SIL Open Font License 1.1; the bitmaps are derived from OFL fonts.",
    }
    if avoid is not None:
        meta.update(part="extra", command=f"python datasets/glyphs/make_glyphs.py --seed {seed} --part extra "
                    "--out datasets/glyphs/glyphs_extra.npz", extra_holdout_rms=avoid.rms,
                    background_fraction=1.0)
    return {
        "images": np.stack(images),
        "script": np.array(script_ids, np.int16),
        "codepoints": np.array(codepoints, np.int32),
        "char_names": np.array([unicodedata.name(chr(cp), f"U+{cp:04X}") for cp in codepoints]),
        "scripts": np.array(used_scripts),
        "split": split_scripts(used_scripts, seed) if avoid is None else np.zeros(len(used_scripts), np.int8),
        "font_index": np.array(font_ids, np.int16),
        "fonts": np.array([f.name for f in fonts]),
        "font_packages": np.array(package_versions(fonts)),
        "font_versions": np.array([font_version(f) for f in fonts]),
        "meta": np.array(json.dumps(meta, sort_keys=True)),
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=("base", "extra"), default="base",
                        help="base: glyphs.npz (the split); extra: glyphs_extra.npz, more background scripts, "
                             "made against the base file beside this script")
    parser.add_argument("--out", type=Path, help="default: glyphs.npz or glyphs_extra.npz beside this script")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--scripts", nargs="*", help="only these scripts (for a quick look)")
    args = parser.parse_args(argv)
    extra = args.part == "extra"
    args.out = args.out or Path(__file__).with_name("glyphs_extra.npz" if extra else "glyphs.npz")
    specs = [s for s in (EXTRA_SCRIPTS if extra else SCRIPTS) if not args.scripts or s.name in args.scripts]
    avoid = held_out_characters(Path(__file__).with_name("glyphs.npz"), args.seed) if extra else None
    data = build(args.seed, specs, avoid=avoid)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **data)
    c = data["images"].shape[0]
    n_eval = int(data["split"].sum())
    print(f"wrote {args.out}: {c} characters, {len(data['scripts'])} scripts ({len(data['scripts']) - n_eval} "
          f"background, {n_eval} evaluation), {args.out.stat().st_size / 2**20:.2f} MiB")


if __name__ == "__main__":
    main()
