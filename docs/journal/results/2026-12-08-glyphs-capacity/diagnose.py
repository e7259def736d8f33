"""What limits a glyph model at the 10th instance of a held-out class? Four probes of a trained model, on held-out
episodes drawn as the client's numpy twin draws them (`episodes.py`):

- `reads`: where the read heads look at the 2nd and 10th instance (rows written by earlier instances of the same
  class, the step's own new row, other classes' rows), correct against wrong answers;
- `beta`: accuracy with the read heads' sharpness (beta) scaled at inference;
- `fonts`: 10th-instance error rate by how many of the 9 earlier renderings came from the 10th's font file, and by
  the nearest earlier font weight;
- `cross`: a 15-way model's weights in a 5-way NTM (labels 0-4 kept, nothing trained) on 5-way episodes.

`python docs/journal/results/2026-12-08-glyphs-capacity/diagnose.py fonts models/one_shot_glyphs 5 2000`
"""

from __future__ import annotations

import collections
import re
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from episodes import accuracy, draw, held_out

import ntm_serve.training.model as model_module
from ntm_serve.training import addressing
from ntm_serve.training.checkpoint import load_model
from ntm_serve.training.config import NTMConfig
from ntm_serve.training.model import NTM
from ntm_serve.training.transplant import transplant

WEIGHTS = {"Light": 300, "Regular": 400, "Medium": 500, "SemiBold": 600, "Bold": 700, "ExtraBold": 800, "Black": 900}


def run(model: NTM, inputs: torch.Tensor, chunk: int = 200) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """-> predicted labels (T, B), read weights (T, B, R, N), write weights (T, B, W, N)"""
    with torch.no_grad():
        parts = [model(inputs[:, i:i + chunk]) for i in range(0, inputs.shape[1], chunk)]
    return tuple(torch.cat([p[k] for p in parts], 1).numpy() for k in (0, 2, 3))  # type: ignore[return-value]


def reads(model: NTM, ways: int, episodes: int) -> None:
    images, _, _ = held_out()
    drawn = draw(images, ways, episodes, seed=7)
    logits, read_w, write_w = run(model, drawn.inputs)
    predicted = logits.argmax(-1)
    rows = write_w[:, :, 0, :].argmax(-1)  # (T, B): the row the first write head wrote at each step
    print(f"first write head's largest weight per step: min {write_w[:, :, 0, :].max(-1).min():.5f}; "
          f"read heads' largest weight, mean per head: {np.round(read_w.max(-1).mean((0, 1)), 3)}")
    mass: dict[tuple[bool, int, str], list[np.ndarray]] = collections.defaultdict(list)
    for t, b in zip(*np.nonzero(np.isin(drawn.instance, (2, 10))), strict=True):
        earlier = drawn.labels[:t, b] == drawn.labels[t, b]
        same, other = sorted(set(rows[:t, b][earlier])), sorted(set(rows[:t, b][~earlier]))
        if not other:
            continue  # only this class shown so far: nothing to compare with
        w = read_w[t, b]  # (R, N)
        key = (bool(predicted[t, b] == drawn.labels[t, b]), int(drawn.instance[t, b]))
        for name, value in (("same class, per row", w[:, same].sum(-1) / len(same)),
                            ("other classes, per row", w[:, other].sum(-1) / len(other)),
                            ("own new row", w[:, rows[t, b]]),
                            ("unwritten, per row", (1 - w[:, same + other + [rows[t, b]]].sum(-1))
                             / (w.shape[1] - len(same) - len(other) - 1))):
            mass[(*key, name)].append(value)
    for (ok, k, name), values in sorted(mass.items()):
        print(f"  {'right' if ok else 'WRONG'} {k:2d}th  {name:24s} n={len(values):5d}  per head "
              f"{np.round(np.mean(values, 0), 4)}")


def beta(model: NTM, ways: int, episodes: int, scales: str = "0.5,0.8,1,1.25,1.5,2") -> None:
    images, _, _ = held_out()
    drawn = draw(images, ways, episodes, seed=7)
    original = addressing.content_weighting
    for scale in (float(s) for s in scales.split(",")):
        model_module.addressing.content_weighting = (
            lambda memory, key, b, skip=None, s=scale: original(memory, key, b * s, skip))  # type: ignore[misc]
        try:
            right = accuracy(run(model, drawn.inputs)[0].argmax(-1), drawn)
            print(f"beta x {scale:4}: 1st/2nd/3rd/4th/5th/10th {right}")
        finally:
            model_module.addressing.content_weighting = original


def fonts(model: NTM, ways: int, episodes: int) -> None:
    images, font_index, g = held_out()
    drawn = draw(images, ways, episodes, seed=11)
    predicted = run(model, drawn.inputs)[0].argmax(-1)

    def weight(f: int) -> int:
        style = re.sub("(Semi)?Condensed", "", Path(str(g.fonts[f])).stem.split("-")[-1])  # type: ignore[attr-defined]
        return WEIGHTS.get(style or "Regular", 400)

    weights = np.vectorize(weight)(font_index)  # (C, 20)
    by_file: dict[int, list[int]] = collections.defaultdict(lambda: [0, 0])
    by_weight: dict[int, list[int]] = collections.defaultdict(lambda: [0, 0])
    for t, b in zip(*np.nonzero(drawn.instance == 10), strict=True):
        c, r = drawn.character[t, b], drawn.rendering[t, b]
        earlier = drawn.rendering[:t, b][drawn.labels[:t, b] == drawn.labels[t, b]]  # (9,)
        wrong = int(predicted[t, b] != drawn.labels[t, b])
        for table, key in ((by_file, min(int((font_index[c, earlier] == font_index[c, r]).sum()), 2)),
                           (by_weight, min(int(np.abs(weights[c, earlier] - weights[c, r]).min()), 300))):
            table[key][0] += 1
            table[key][1] += wrong
    for title, table in (("earlier renderings from the 10th's font file (2: two or more)", by_file),
                         ("nearest earlier font weight, difference (300: 300 or more)", by_weight)):
        print(title)
        for key, (n, e) in sorted(table.items()):
            print(f"  {key:4d}: {n:6d} tenths, {e:4d} wrong, {100 * e / n:5.2f} %")


def cross(model: NTM, ways: int, episodes: int) -> None:
    five = NTM(NTMConfig(**{**model.config.to_dict(), "input_size": 405, "output_size": 5}))
    transplant(model, five)
    images, _, _ = held_out()
    drawn = draw(images, 5, episodes, seed=7)
    right = accuracy(run(five.eval(), drawn.inputs)[0].argmax(-1), drawn)
    print(f"on 5-way episodes: 1st/2nd/3rd/4th/5th/10th {right}")


if __name__ == "__main__":
    torch.set_num_threads(1)
    probe, folder, ways, episodes, *rest = sys.argv[1:]
    loaded, _ = load_model(folder)
    probes = {"reads": reads, "beta": beta, "fonts": fonts, "cross": cross}
    probes[probe](loaded.eval(), int(ways), int(episodes), *rest)
