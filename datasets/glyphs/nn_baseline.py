"""Pixel nearest-neighbour baseline for Santoro-style one-shot episodes on the glyphs evaluation split.

Why: a memory-augmented network trained on the background scripts has to beat what plain pixel matching
achieves on held-out scripts; this prints that bar.

Episode (Santoro et al. 2016): n characters drawn from the evaluation split, each shown in ``--per-class``
renderings drawn from its 20; the n x per-class images come in random order, each character with a random label
0..n-1. At every step the classifier predicts the current image's label, then is told the true label. Accuracy is
reported by instance: at the k-th time a character is shown (the 1st can only be guessed).

Two classifiers, both Euclidean on raw pixels in [0, 1]:
  nn          label of the nearest earlier image (a uniform guess at the very first step).
  nn+novelty  the same, but if the nearest earlier image is farther than a threshold, guess uniformly among
              labels not yet seen in the episode: a learner can learn that trick (Santoro's MANN does), so the
              bar includes it. The threshold is tuned on background-split episodes, never on evaluation ones.
  nn blur s   nn on images blurred by a Gaussian of sigma s pixels (same episodes): a slightly stronger bar.
A guess counts as its expected accuracy (1/number of choices), so the table does not depend on guess draws.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for a plain checkout
from ntm_serve.data.glyphs import load_glyphs  # numpy only


def episode_steps(images: np.ndarray, n_way: int, per_class: int,
                  rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Play one episode; per step: instance number, NN correct, nearest distance, unseen-label guess accuracy."""
    chars = rng.choice(images.shape[0], size=n_way, replace=False)
    cls = np.repeat(np.arange(n_way), per_class)
    draws = np.concatenate([rng.choice(images.shape[1], size=per_class, replace=False) for _ in range(n_way)])
    order = rng.permutation(cls.size)
    cls, draws = cls[order], draws[order]
    labels = rng.permutation(n_way)[cls]  # random label per character; only equality matters to NN
    x = images[chars[cls], draws].reshape(cls.size, -1).astype(np.float64)
    sq = (x * x).sum(axis=1)
    d2 = sq[:, None] + sq[None, :] - 2.0 * x @ x.T
    d2[np.triu_indices(cls.size)] = np.inf  # only earlier images are in memory
    nearest = d2.argmin(axis=1)
    dmin = np.sqrt(np.maximum(d2[np.arange(cls.size), nearest], 0.0))
    nn_correct = (labels[nearest] == labels).astype(np.float64)
    nn_correct[0] = 1.0 / n_way
    instance = np.zeros(cls.size, np.int64)
    unseen_acc = np.zeros(cls.size)
    seen: set[int] = set()
    count = np.zeros(n_way, np.int64)
    for t, c in enumerate(cls):
        instance[t] = count[c]
        count[c] += 1
        unseen = n_way - len(seen)
        unseen_acc[t] = (1.0 / unseen) if c not in seen else 0.0
        seen.add(int(c))
    return {"instance": instance, "nn": nn_correct, "dmin": dmin, "unseen_acc": unseen_acc}


def play(images: np.ndarray, n_way: int, per_class: int, episodes: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    steps = [episode_steps(images, n_way, per_class, rng) for _ in range(episodes)]
    return {k: np.concatenate([s[k] for s in steps]) for k in steps[0]}


def novelty_correct(s: dict[str, np.ndarray], threshold: float) -> np.ndarray:
    """Per-step accuracy of nn+novelty at a threshold (at step 0 dmin is inf: a guess among all labels)."""
    return np.where(s["dmin"] > threshold, s["unseen_acc"], s["nn"])


def tune_threshold(s: dict[str, np.ndarray]) -> float:
    """The novelty threshold with the best mean accuracy over all steps (on background episodes)."""
    finite = s["dmin"][np.isfinite(s["dmin"])]
    grid = np.quantile(finite, np.linspace(0.0, 1.0, 201))
    scores = [novelty_correct(s, t).mean() for t in grid]
    return float(grid[int(np.argmax(scores))])


def blur(images: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of the last two axes (numpy only): pixel matching that tolerates a pixel of misalignment."""
    r = max(1, round(3 * sigma))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    out = images
    for axis in (-2, -1):
        pad = [(0, 0)] * out.ndim
        pad[axis] = (r, r)
        padded = np.pad(out, pad)
        n = out.shape[axis]
        out = sum(w * np.take(padded, np.arange(i, i + n), axis=axis) for i, w in enumerate(k))
    return out.astype(np.float32)


def by_instance(correct: np.ndarray, instance: np.ndarray, k_max: int) -> np.ndarray:
    return np.array([correct[instance == k].mean() for k in range(k_max)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--episodes", type=int, default=1000)
    parser.add_argument("--per-class", type=int, default=11, help="renderings of each character per episode")
    parser.add_argument("--ways", type=int, nargs="+", default=[5, 15])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--blur", type=float, default=1.0, help="sigma (pixels) of the blurred-pixel row; 0: none")
    args = parser.parse_args()
    g = load_glyphs(args.data)
    evaluation = g.images[g.evaluation]
    background = g.images[g.background]
    k_max = min(10, args.per_class)
    print(f"evaluation split: {evaluation.shape[0]} characters; {args.episodes} episodes each; "
          f"{args.per_class} renderings per character; accuracy (%) at the k-th instance")
    print(f"{'':18s}" + "".join(f"{k:>6d}" for k in range(1, k_max + 1)))
    for n_way in args.ways:
        tune = play(background, n_way, args.per_class, args.episodes, args.seed + 1000 + n_way)
        threshold = tune_threshold(tune)
        s = play(evaluation, n_way, args.per_class, args.episodes, args.seed + n_way)
        rows = [("nn", s["nn"]), ("nn+novelty", novelty_correct(s, threshold))]
        if args.blur > 0:
            b = play(blur(evaluation, args.blur), n_way, args.per_class, args.episodes, args.seed + n_way)
            rows.append((f"nn blur {args.blur:g}", b["nn"]))
        for name, correct in rows:
            acc = by_instance(correct, s["instance"], k_max)
            print(f"{n_way:>2d}-way {name:11s}" + "".join(f"{100 * a:6.1f}" for a in acc))
        print(f"{'':9s}(novelty threshold {threshold:.2f}, tuned on background episodes)")


if __name__ == "__main__":
    main()
