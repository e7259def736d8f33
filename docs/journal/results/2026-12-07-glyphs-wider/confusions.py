"""Which characters a glyph model confuses at the 10th instance of a class (held-out scripts, 1,000 episodes of the
numpy twin the client draws): are its last errors look-alike pairs, or scattered?

`python docs/journal/results/2026-12-07-glyphs-wider/confusions.py models/one_shot_glyphs 5` (15 for the 15-way).
"""

from __future__ import annotations

import collections
import json
import sys

import numpy as np
import torch

from ntm_serve.demos import one_shot_np
from ntm_serve.training import one_shot_glyphs
from ntm_serve.training.checkpoint import load_model


def main(folder: str, ways: int, episodes: int = 1000, chunk: int = 100) -> None:
    torch.set_num_threads(1)
    model, _ = load_model(folder)
    model.eval()
    meta = json.dumps({"class_split": one_shot_glyphs.split_description()})
    images, names = one_shot_np.glyph_test_characters(meta)
    rng = np.random.default_rng(7)
    drawn = [one_shot_np.glyph_episode(rng, images, names, ways) for _ in range(episodes)]
    inputs = torch.from_numpy(np.stack([e.inputs for e in drawn], 1))  # (T, B, I)
    with torch.no_grad():
        logits = torch.cat([model(inputs[:, i:i + chunk])[0] for i in range(0, episodes, chunk)], 1)  # (T, B, C)
    predicted = logits.argmax(-1).numpy()  # (T, B)
    pairs: collections.Counter[tuple[str, ...]] = collections.Counter()
    scripts: collections.Counter[str] = collections.Counter()
    for b, episode in enumerate(drawn):
        seen: collections.Counter[int] = collections.Counter()
        for t, label in enumerate(episode.labels):
            seen[label] += 1
            if seen[label] == 10 and predicted[t, b] != label:
                pairs[tuple(sorted((episode.classes[label], episode.classes[predicted[t, b]])))] += 1
                scripts[episode.classes[label].split(" U+")[0]] += 1
    errors = sum(pairs.values())
    print(f"10th-instance errors: {errors} of {episodes * ways}; {len(pairs)} distinct pairs, "
          f"{sum(1 for a, b in pairs if a.split(' U+')[0] == b.split(' U+')[0])} of them within one script")
    for pair, count in pairs.most_common(10):
        print(f"  {count}  {pair[0]}  <->  {pair[1]}")
    print("by script of the true character:", scripts.most_common(12))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
