"""A learner with no weights for the one-shot task: the nearest labelled sample in pixel space (1-NN).

It sees exactly what a model sees (the inputs, each label one step late) and answers with the label of the
closest earlier sample whose label has arrived. On the digits it is the ceiling of any learner that compares
raw images: an NTM trained on permuted episodes can learn no better comparison than this one (the weights
see no fixed pixel layout), and a metric learned on the 18 training classes does worse on held-out digits
(docs/training.md, "Binding the late label"). It is a reference row, not a served model.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ntm_serve.training.one_shot import CLASSES, FEATURES

CONFIDENT = 20.0  # logit of the chosen label: a one-hot answer, like a saturated softmax


class NearestNeighbour(nn.Module):
    """forward like NTM.forward: inputs (T, B, F + C) -> (logits (T, B, C), None, None, None). F features (64 for
    the digits, 400 for the glyphs), then the one-hot of the previous step's label over C labels."""

    def __init__(self, features: int = FEATURES, classes: int = CLASSES) -> None:
        super().__init__()
        self.features, self.classes = features, classes

    def forward(self, inputs: Tensor, state: object = None) -> tuple[Tensor, None, None, None]:
        steps, f, c = inputs.shape[0], self.features, self.classes
        features = inputs[..., :f].transpose(0, 1)  # (B, T, F)
        # The label of step s arrives with step s + 1's input; the last step's label never arrives.
        labels = torch.cat([inputs[1:, :, f:f + c], torch.zeros_like(inputs[:1, :, f:f + c])])  # (T, B, C)
        distance = torch.cdist(features, features)  # (B, T query, T earlier)
        known = torch.ones(steps, steps, dtype=torch.bool).tril(-1)  # earlier step s < t: its label is in by t
        distance = distance.masked_fill(~known, float("inf"))  # (B, T, T)
        nearest = distance.argmin(-1)  # (B, T)
        answer = torch.gather(labels.transpose(0, 1), 1, nearest.unsqueeze(-1).expand(-1, -1, c))  # (B, T, C)
        answer[:, 0] = 0.0  # nothing is labelled at t = 0: no preference (arg-max picks label 0)
        return (CONFIDENT * answer).transpose(0, 1), None, None, None  # (T, B, C)
