"""A task as a file of Python (`--task-file`), and the NTM as a library (ntm_serve.training: NTMSequence,
export_model): each trained or built in a test, exported with parity and served through the real server."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import service_config

from ntm_serve.client.sdk import NTMClient
from ntm_serve.export import export_model
from ntm_serve.export.parity import check_folder
from ntm_serve.server.server import ServerThread
from ntm_serve.training import NTM, NTMConfig, NTMSequence
from ntm_serve.training.__main__ import main
from ntm_serve.training.checkpoint import load_model
from ntm_serve.training.task_source import resolve_task

ECHO = textwrap.dedent('''
    """Echo: each output is the input bits from `delay` steps before (a test task file)."""
    import torch

    from ntm_serve.training import Batch, TaskSpec


    def make_task(delay: int = 1, width: int = 2, steps: int = 8) -> TaskSpec:
        def sample(gen: torch.Generator, batch: int) -> Batch:
            x = torch.randint(0, 2, (steps, batch, width), generator=gen).float()  # (T, B, W)
            return Batch(x, x[: steps - delay])  # compared with the last T - delay outputs

        return TaskSpec(f"echo{delay}", width, width, sample, ((f"T={steps}", sample),),
                        f"each output: the input {delay} steps before")
''')


@pytest.fixture(scope="module")
def echo_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("echo")
    (root / "echo.py").write_text(ECHO)
    out = root / "models" / "echo"
    assert main(["--task-file", str(root / "echo.py"), "--set", "task.delay=2", "--out", str(out),
                 "--ntm", '{"controller_size": 32, "memory_rows": 8, "memory_width": 4}', "--lr", "1e-2",
                 "--sequences", "8000", "--eval-every", "1000", "--stop-below", "0.05", "--device", "cpu"]) == 0
    from ntm_serve.export.__main__ import main as export_main

    assert export_main([str(out)]) == 0
    return out


def test_a_task_file_trains_with_its_options(echo_model: Path) -> None:
    meta = json.loads((echo_model / "config.json").read_text())
    assert meta["task"] == "echo2" and meta["train_config"]["task_options"] == {"delay": 2}
    report = json.loads((echo_model / "eval.json").read_text())
    assert report["points"][0]["name"] == "T=8" and report["points"][0]["bit_errors"] < 0.1, report["points"]


def test_a_task_file_model_exports_with_parity_and_is_served(echo_model: Path) -> None:
    rows, ckpt = check_folder(echo_model, "cpu", steps=50, batch=2, ops=False)
    assert ckpt.task == "echo2" and not [r.check for r in rows if not r.passed]
    bits = np.random.default_rng(0).integers(0, 2, (8, 2)).astype(np.float32)
    with ServerThread(service_config(echo_model.parent)) as server, NTMClient(server.target, timeout=60) as client:
        info = next(m for m in client.list_models() if m.name == "echo")
        assert (info.task, info.encoding) == ("echo2", "each output: the input 2 steps before")
        outputs = client.step(client.create_session("echo").session_id, bits).outputs  # (8, 2)
    assert np.array_equal(outputs[2:] > 0.5, bits[:-2] > 0.5)


def test_a_broken_task_file_is_refused_before_anything_is_written(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "none.py").write_text("x = 1\n")
    (tmp_path / "shapes.py").write_text(ECHO.replace("f\"echo{delay}\", width, width", "\"bad\", width + 1, width"))
    cases = {"none.py": "defines no make_task(**options) -> TaskSpec",
             "shapes.py": "its sampler's batch of 2 has inputs (8, 2, 2), want (T, 2, 3)",
             "absent.py": "no such file"}
    for name, words in cases.items():
        out = tmp_path / f"out_{name}"
        assert main(["--task-file", str(tmp_path / name), "--out", str(out)]) == 2
        assert words in capsys.readouterr().err
        assert not out.exists()
    with pytest.raises(ValueError, match="has no option 'length'; its options: delay, steps, width"):
        (tmp_path / "echo.py").write_text(ECHO)
        resolve_task(task_file=str(tmp_path / "echo.py"), options={"length": 3})


# ---------------------------------------------------------------- the NTM as a library


def test_ntm_sequence_is_the_ntm_batch_first_and_its_step_is_pure() -> None:
    torch.manual_seed(0)
    model = NTMSequence(NTMConfig(input_size=3, output_size=2, controller_size=16, memory_rows=8, memory_width=4))
    x = torch.rand(4, 5, 3)  # [B, T, I]
    logits = model(x)  # [B, T, O]
    time_major = model.ntm(x.transpose(0, 1))[0]  # (T, B, O)
    assert logits.shape == (4, 5, 2) and torch.equal(logits, time_major.transpose(0, 1))
    first, state = model.run(x[:, :3])
    rest, _ = model.run(x[:, 3:], state)  # carrying the state continues the sequence
    torch.testing.assert_close(torch.cat([first, rest], 1), logits)
    state = model.initial_state(4)
    y1, s1 = model.step(x[:, 0], state)
    y2, s2 = model.step(x[:, 0], state)  # the same call again: the module holds no sequence state
    assert torch.equal(y1, y2) and all(torch.equal(a, b) for a, b in zip(s1, s2, strict=True))
    torch.testing.assert_close(y1, logits[:, 0])


def test_a_model_built_in_ones_own_code_exports_and_is_served(tmp_path: Path) -> None:
    """Train a few steps with one's own loop, export_model, then the folder serves like a shipped one."""
    torch.manual_seed(0)
    model = NTMSequence(NTMConfig(input_size=3, output_size=3, controller_size=16, memory_rows=8, memory_width=4))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    x = torch.randint(0, 2, (8, 6, 3)).float()
    for _ in range(5):
        loss = torch.nn.functional.mse_loss(model(x), x)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    folder = tmp_path / "models" / "mine"
    with pytest.raises(ValueError, match="output_activation must be one of"):
        export_model(model, folder, task_name="mine", output_activation="tanh")
    assert not folder.exists()  # refused before anything is written
    paths = export_model(model, folder, task_name="mine", encoding="three reals in, three out",
                         output_activation="identity")
    assert set(paths) == {"step", "sequence", "initial_state"} and model.training  # its mode is left as it was
    reloaded, meta = load_model(folder)
    assert isinstance(reloaded, NTM) and meta["output_activation"] == "identity"
    rows, _ = check_folder(folder, "cpu", steps=40, batch=2, ops=False)
    assert not [r.check for r in rows if not r.passed]
    model.eval()
    with torch.no_grad():
        expected = model(x[:1])[0].numpy()  # (6, 3): identity outputs are the logits
    with ServerThread(service_config(folder.parent)) as server, NTMClient(server.target, timeout=60) as client:
        info = next(m for m in client.list_models() if m.name == "mine")
        assert (info.task, info.encoding, info.output_activation) == ("mine", "three reals in, three out", "identity")
        served = client.step(client.create_session("mine").session_id, x[0].numpy()).outputs
    np.testing.assert_allclose(served, expected, atol=1e-5)
