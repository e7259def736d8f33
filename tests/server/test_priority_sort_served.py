"""The shipped priority-sort model, served: fresh 20 -> 16 sorts through real sessions sort (issue 10, item 1).

The issue's <= 2 bit errors per sequence is checked over 1000 sequences in models/priority_sort/eval.json; here a
small sample goes through the real server, and the first one is compared with the model's own graphs run offline
(bit for bit: the server's contract) and with torch (within the float32 floor of this ill-conditioned task).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import Offline

from ntm_serve.client.sdk import NTMClient
from ntm_serve.demos import tasks_np

SERVED_SEQUENCES = 60  # small for CI
SERVED_BAR = 3.0  # mean bit errors per sequence of 128 (eval.md: under 2 over 1000); 60 sequences vary by ~0.6
PERFECT_BAR = 0.35  # fraction of perfect sequences (eval.md: about 0.6)


def test_served_sessions_sort_fresh_sequences(server, models_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from ntm_serve.training.checkpoint import load_model

    if not (models_dir / "priority_sort" / "step.onnx").is_file():
        pytest.skip("no shipped models/priority_sort graphs")
    model, _ = load_model(models_dir / "priority_sort")
    rng = np.random.default_rng(2014)
    errors = []
    with NTMClient(server.target, timeout=60) as client:
        for i in range(SERVED_SEQUENCES):
            example = tasks_np.priority_sort(rng)
            session = client.create_session("priority_sort")
            out = client.step(session.session_id, example.inputs).outputs  # (37, 8) probabilities
            client.delete_session(session.session_id)
            if i == 0:
                with torch.no_grad():
                    logits = model(torch.from_numpy(example.inputs)[:, None])[0][:, 0]  # (37, 8)
                np.testing.assert_array_equal(out, Offline(models_dir / "priority_sort").run(example.inputs)["outputs"])
                # Torch float32 and onnxruntime round differently; priority sort's picks among near-equal scores
                # amplify it by CPU (1.1e-4 at step 26 on an Intel Xeon, under 1e-4 on an AMD EPYC).
                np.testing.assert_allclose(out, torch.sigmoid(logits).numpy(), atol=3e-4)
            errors.append(int(((out[-16:] > 0.5) != (example.targets > 0.5)).sum()))
    mean, perfect = float(np.mean(errors)), float(np.mean(np.array(errors) == 0))
    with capsys.disabled():  # the figure is the report
        print(f"\n  served priority_sort, {SERVED_SEQUENCES} fresh sequences: {mean:.2f} bit errors/seq of 128, "
              f"{100 * perfect:.0f} % perfect")
    assert mean <= SERVED_BAR and perfect >= PERFECT_BAR, (mean, perfect)
