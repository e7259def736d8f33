"""Training on CUDA (`--device cuda`): the same numbers as on the CPU up to float noise, and checkpoints and
resume files that move between the two. Skips where torch sees no GPU (CI); benchmarks/device_check.sh runs
it on a GPU machine."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ntm_serve.training.checkpoint import load_model
from ntm_serve.training.metrics import sequence_loss
from ntm_serve.training.tasks import get_task
from ntm_serve.training.train import TrainConfig, build_model, train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="torch sees no CUDA device")

SMALL = {"controller_size": 32, "memory_rows": 24, "memory_width": 6}


def _config(out: Path, device: str, sequences: int = 64) -> TrainConfig:
    return TrainConfig(task="copy", out=str(out), sequences=sequences, batch_size=16, eval_every=32,
                       eval_sequences=16, ntm=SMALL, device=device)


def test_one_step_gives_the_cpu_loss_and_gradients() -> None:
    torch.backends.cuda.matmul.allow_tf32 = False  # TF32 would round matmuls to 10 bits: not float noise
    task = get_task("copy")
    batch = task.sample(torch.Generator().manual_seed(0), 16)
    grads = {}
    for device in ("cpu", "cuda"):
        model = build_model(_config(Path("/unused"), device), task).to(device)
        loss = sequence_loss(model(batch.inputs.to(device))[0], batch.targets.to(device))
        loss.backward()
        grads[device] = (float(loss), {n: p.grad.cpu() for n, p in model.named_parameters() if p.grad is not None})
    assert grads["cpu"][0] == pytest.approx(grads["cuda"][0], rel=1e-5)
    for name, g in grads["cpu"][1].items():
        torch.testing.assert_close(grads["cuda"][1][name], g, rtol=1e-4, atol=1e-6, msg=name)


def test_a_cuda_run_resumes_on_cpu_and_its_checkpoint_loads_anywhere(tmp_path: Path) -> None:
    out = tmp_path / "run"
    train(_config(out, "cuda", sequences=32), progress=False)
    result = train(_config(out, "cpu", sequences=64), progress=False)  # the same run, moved to the CPU
    assert result["sequences"] == 64
    model, _ = load_model(out)
    assert all(p.device.type == "cpu" for p in model.parameters())
    again = train(_config(out, "cuda", sequences=96), progress=False)  # and back
    assert again["sequences"] == 96
