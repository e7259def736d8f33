"""One-shot learning at Omniglot's scale (Santoro et al. 2016) on the glyphs data set (ntm_serve/data/glyphs.py).

An episode picks `ways` characters of one split (background scripts for training, evaluation scripts held out),
gives each a random label 0..ways-1 (new every episode), and shows PER_CLASS renderings of each, drawn without
replacement from its 20, all ways x PER_CLASS images in random order. The input at step t is the image's 400 pixels
(20x20 row-major, ink = 1), then the one-hot of step t-1's true label (zeros at t = 0); the target is the one-hot
of step t's label. Every character therefore appears exactly PER_CLASS times, so accuracy at the 1st..10th instance
is measured on every episode. Labels are one-hot for 15-way too (Santoro used 5-character strings there; one-hot
keeps one encoding and a softmax over 15 labels).

Training episodes may turn each character by a random quarter turn (per episode and character: Santoro's
augmentation, turned characters are new classes), so the 923 background characters give 3,692 classes; mirroring
too (`flips`: a mirrored character is another new class, the 8 symmetries of the square give 7,384), and move each
rendering by up to `shift` pixels (per instance, like Santoro's translations: the same class, drawn elsewhere), and
thicken or thin each rendering's strokes by up to `strokes` of a pixel's grey dilation or erosion (per instance: a
bolder or lighter weight of the same drawing, as another font of the family would give).
With `extra_scripts` the background also holds the scripts of datasets/glyphs/glyphs_extra.npz (held-out
scripts and characters stay exactly the same).
"""

from __future__ import annotations

from functools import cache

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ntm_serve.data.glyphs import PIXELS, SIDE, extra_path, glyphs_path, load_glyphs
from ntm_serve.training.batch import Batch

PER_CLASS = 10  # renderings of each character per episode: the 10th instance is Santoro's last column
SPLITS = ("background", "evaluation")


def encoding(ways: int, per_class: int = PER_CLASS) -> str:
    return (
        f"Episodes of {ways * per_class} steps: {ways} characters of the glyphs data set (datasets/glyphs), each "
        f"with a random label 0-{ways - 1} assigned per episode and shown in {per_class} of its 20 renderings, in "
        f"random order. Input at step t ({PIXELS + ways} channels): the 20x20 image row-major in [0, 1] (ink = 1) on "
        f"ch 0-{PIXELS - 1}, then the one-hot of step t-1's true label on ch {PIXELS}-{PIXELS + ways - 1} (all zero "
        f"at t = 0). Output at step t: softmax probabilities of step t's label over {ways} labels. Training "
        f"characters come from the background scripts, test characters from the evaluation scripts; see class_split."
    )


@cache
def split_images(split: str, extra_scripts: bool = False) -> Tensor:
    """Every rendering of every character of a split (with `extra_scripts`, glyphs_extra.npz's too: background
    only). -> (C, R, 400) float32"""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    g = load_glyphs(extra=extra_scripts).split(split)
    return torch.from_numpy(np.ascontiguousarray(g.images.reshape(g.n_characters, g.n_renderings, PIXELS)))


@cache
def split_description(extra_scripts: bool = False) -> dict[str, object]:
    """The split as written to config.json and the ONNX metadata (ModelInfo.task_metadata), so a client can draw
    test episodes from exactly the scripts the model never saw. Reads only the files' small tables."""
    files = [glyphs_path(), *([extra_path()] if extra_scripts else [])]
    names: dict[str, list[str]] = {"background": [], "evaluation": []}
    characters = {"background": 0, "evaluation": 0}
    for path in files:
        with np.load(path, allow_pickle=False) as z:
            scripts, split, script = z["scripts"], z["split"], z["script"]
        counts = np.bincount(script, minlength=len(scripts))
        for k, code in (("background", 0), ("evaluation", 1)):
            names[k] += [str(s) for s, c in zip(scripts, split, strict=True) if c == code]
            characters[k] += int(counts[split == code].sum())
    data = "glyphs (datasets/glyphs/glyphs.npz): 20 renderings of each character, 20x20, ink = 1"
    if extra_scripts:
        data = data.replace("glyphs.npz)", "glyphs.npz and glyphs_extra.npz, training scripts only)")
    return {
        "data": data,
        "split_by": "script",
        "train_scripts": names["background"],
        "test_scripts": names["evaluation"],
        "train_characters": characters["background"],
        "test_characters": characters["evaluation"],
    }


def episode_order(gen: torch.Generator, batch: int, ways: int, per_class: int) -> Tensor:
    """A random order of the ways x per_class (class, instance) pairs: entry i of a row is pair
    (i // per_class, i % per_class). -> (B, T)"""
    return torch.argsort(torch.rand(batch, ways * per_class, generator=gen), dim=1)


def quarter_turns(images: Tensor, turns: Tensor) -> Tensor:
    """Each image turned counter-clockwise by its own number of quarter turns. images (..., 400), turns (...) int
    -> (..., 400)"""
    square = images.reshape(*images.shape[:-1], SIDE, SIDE)  # (..., 20, 20)
    turned = torch.stack([torch.rot90(square, k, dims=(-2, -1)) for k in range(4)])  # (4, ..., 20, 20)
    index = turns.reshape(1, *turns.shape, 1, 1).expand(1, *square.shape)
    return torch.gather(turned, 0, index)[0].reshape(images.shape)


def mirrored(images: Tensor, flip: Tensor) -> Tensor:
    """Each image mirrored left to right where its flip is true. images (..., 400), flip (...) bool -> (..., 400)"""
    square = images.reshape(*images.shape[:-1], SIDE, SIDE)  # (..., 20, 20)
    out = torch.where(flip[..., None, None], square.flip(-1), square)  # (..., 20, 20)
    return out.reshape(images.shape)


def shifted(images: Tensor, dy: Tensor, dx: Tensor) -> Tensor:
    """Each image moved by its own (dy, dx) whole pixels, ink leaving the box lost and the gap left empty (0).
    images (..., 400), dy, dx (...) int in [-SIDE + 1, SIDE - 1] -> (..., 400)"""
    square = images.reshape(-1, SIDE, SIDE)  # (K, 20, 20)
    pad = SIDE - 1
    padded = F.pad(square, (pad, pad, pad, pad))  # (K, 58, 58): the image in the middle of an empty frame
    rows = torch.arange(SIDE) + pad  # (20,): where the image's rows sit in the frame
    take_rows = (rows.unsqueeze(0) - dy.reshape(-1, 1)).unsqueeze(-1)  # (K, 20, 1): out[y] = in[y - dy]
    take_cols = (rows.unsqueeze(0) - dx.reshape(-1, 1)).unsqueeze(-2)  # (K, 1, 20)
    k = torch.arange(square.shape[0]).reshape(-1, 1, 1)  # (K, 1, 1)
    return padded[k, take_rows, take_cols].reshape(images.shape)  # (..., 400)


def restroked(images: Tensor, amount: Tensor) -> Tensor:
    """Each image's strokes thickened (amount > 0) or thinned (amount < 0): blended that far towards its 3x3 grey
    dilation or erosion. images (..., 400), amount (...) in [-1, 1] -> (..., 400)"""
    square = images.reshape(-1, 1, SIDE, SIDE)  # (K, 1, 20, 20)
    thick = F.max_pool2d(square, 3, stride=1, padding=1)  # (K, 1, 20, 20): ink spread one pixel
    thin = -F.max_pool2d(-square, 3, stride=1, padding=1)  # (K, 1, 20, 20): ink kept where its neighbours are inked
    a = amount.reshape(-1, 1, 1, 1)  # (K, 1, 1, 1)
    out = square + a.clamp(min=0) * (thick - square) + (-a).clamp(min=0) * (thin - square)
    return out.reshape(images.shape)


def check_strokes(strokes: float) -> None:
    """A stroke change of 0 to 1 (a whole dilation or erosion); anything else is refused."""
    if not 0.0 <= strokes <= 1.0:
        raise ValueError(f"strokes must be in [0, 1], got {strokes}")


def check_shift(shift: int) -> None:
    """A shift of 0 to SIDE - 1 pixels; anything else is refused (a config's `shift` is checked when read)."""
    if not 0 <= shift < SIDE:
        raise ValueError(f"shift must be in [0, {SIDE - 1}] pixels, got {shift}")


def glyph_episodes(gen: torch.Generator, batch: int, split: str, ways: int, per_class: int = PER_CLASS,
                   turns: bool = False, flips: bool = False, shift: int = 0, extra_scripts: bool = False,
                   strokes: float = 0.0) -> Batch:
    """A batch of episodes over `ways` characters of the split. `turns`, `flips`: each character of an episode
    turned by a random quarter turn, mirrored at random (a new class either way); `shift`: each instance moved by
    up to that many pixels in x and y; `extra_scripts`: the split with glyphs_extra.npz's scripts; `strokes`: each
    instance's strokes thickened or thinned by a uniform amount in [-strokes, strokes] (`restroked`).
    -> inputs (T, B, 400 + ways), targets (T, B, ways)"""
    images = split_images(split, extra_scripts)  # (C, R, 400)
    chars, renderings = images.shape[:2]
    if not 1 <= ways <= chars or not 1 <= per_class <= renderings:
        raise ValueError(f"need 1 <= ways <= {chars} and 1 <= per_class <= {renderings}, got {ways}, {per_class}")
    classes = torch.argsort(torch.rand(batch, chars, generator=gen), dim=1)[:, :ways]  # (B, ways)
    draws = torch.argsort(torch.rand(batch, ways, renderings, generator=gen), dim=2)[:, :, :per_class]  # (B, w, k)
    labels = torch.argsort(torch.rand(batch, ways, generator=gen), dim=1)  # (B, ways): label of each class
    order = episode_order(gen, batch, ways, per_class)  # (B, T)
    slot = order // per_class  # (B, T): which episode class each step shows
    character = torch.gather(classes, 1, slot)  # (B, T)
    rendering = torch.gather(draws.reshape(batch, -1), 1, order)  # (B, T): a distinct rendering per instance
    features = images[character, rendering]  # (B, T, 400)
    if turns:
        turn = torch.randint(0, 4, (batch, ways), generator=gen)  # (B, ways): one turn per character
        features = quarter_turns(features, torch.gather(turn, 1, slot))
    if flips:
        flip = torch.rand(batch, ways, generator=gen) < 0.5  # (B, ways): one mirror choice per character
        features = mirrored(features, torch.gather(flip, 1, slot))
    check_shift(shift)
    if shift:
        moves = torch.randint(-shift, shift + 1, (2, *features.shape[:2]), generator=gen)  # (2, B, T)
        features = shifted(features, moves[0], moves[1])
    check_strokes(strokes)
    if strokes:  # drawn only when asked for, so runs without it keep their random stream
        amount = (torch.rand(features.shape[:2], generator=gen) * 2.0 - 1.0) * strokes  # (B, T)
        features = restroked(features, amount)
    return encode_episode(features.transpose(0, 1), torch.gather(labels, 1, slot).T, ways)


def encode_episode(features: Tensor, labels: Tensor, ways: int) -> Batch:
    """features (T, B, 400), labels (T, B) -> inputs (T, B, 400 + ways) with the label one step late,
    targets (T, B, ways) one-hot."""
    targets = F.one_hot(labels, ways).float()  # (T, B, ways)
    previous = torch.cat([torch.zeros_like(targets[:1]), targets[:-1]])  # (T, B, ways): zeros at t = 0
    return Batch(torch.cat([features, previous], dim=-1), targets)
