"""The shipped glyph one-shot models (models/one_shot_glyphs, 5-way; models/one_shot_glyphs15, 15-way) served:
ListModels carries the script split, sessions learn characters of held-out scripts as offline torch does and as
eval.json says, and `ntm-demo one_shot --model <name> --plot` runs an episode end to end."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from helpers import ROOT, service_config, snapshot_model

from ntm_serve.client.sdk import NTMClient
from ntm_serve.demos import one_shot_np
from ntm_serve.demos.__main__ import main as demo_main
from ntm_serve.server.server import ServerThread

WAYS = {"one_shot_glyphs": 5, "one_shot_glyphs15": 15}  # the glyph models and their episodes' classes
SHIPPED = [name for name in WAYS if (ROOT / "models" / name / "step.onnx").is_file()]  # 15-way: once it ships
EPISODES = 20  # served episodes: 100 samples per instance number
SLACK = 0.15  # served accuracy may fall this far below eval.json's (1,000 episodes): ~3 standard errors at 100


@pytest.fixture(scope="module", params=SHIPPED)
def served(request: pytest.FixtureRequest,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[NTMClient, ServerThread, Path]]:
    name = request.param
    models = tmp_path_factory.mktemp("glyph_models")
    if not snapshot_model(ROOT / "models" / name, models / name):
        pytest.fail(f"no complete shipped models/{name} (checkpoint + graphs of one export)")
    with ServerThread(service_config(models)) as server, NTMClient(server.target, timeout=60) as client:
        yield client, server, models / name


def test_list_models_carries_the_script_split(served) -> None:
    client, _, folder = served
    name, ways = folder.name, WAYS[folder.name]
    info = {m.name: m for m in client.list_models()}[name]
    assert (info.task, info.input_size, info.output_size, info.output_activation) == (name, 400 + ways, ways,
                                                                                         "softmax")
    split = json.loads(info.task_metadata)["class_split"]
    assert split == json.loads((folder / "config.json").read_text())["class_split"]
    extra = json.loads((folder / "config.json").read_text())["train_config"]["task_options"].get("extra_scripts", False)
    assert len(split["train_scripts"]) == (29 + 79 if extra else 29) and len(split["test_scripts"]) == 20
    assert not set(split["train_scripts"]) & set(split["test_scripts"])


def test_served_sessions_learn_held_out_characters_as_the_report_says(served) -> None:
    import torch

    from ntm_serve.training.checkpoint import load_model

    client, _, folder = served
    name, ways = folder.name, WAYS[folder.name]
    info = {m.name: m for m in client.list_models()}[name]
    images, names = one_shot_np.glyph_test_characters(info.task_metadata)
    model, _ = load_model(folder)
    rng = np.random.default_rng(26)
    hits, seen = np.zeros(10), np.zeros(10)
    for i in range(EPISODES):
        episode = one_shot_np.glyph_episode(rng, images, names, ways)
        session = client.create_session(name)
        out = client.step(session.session_id, episode.inputs).outputs  # (10 * ways, ways)
        client.delete_session(session.session_id)
        np.testing.assert_allclose(out.sum(-1), 1.0, atol=1e-5)
        if i == 0:
            with torch.no_grad():
                expected = torch.softmax(model(torch.from_numpy(episode.inputs)[:, None])[0][:, 0], -1).numpy()
            np.testing.assert_allclose(out, expected, atol=1e-4)
        h, s = one_shot_np.accuracy_by_instance(out, episode.labels)
        hits, seen = hits + h, seen + s
    accuracy = hits / seen
    report = json.loads((ROOT / "models" / name / "eval.json").read_text())
    assert report["checkpoint_sha256"] == hashlib.sha256((folder / "checkpoint.pt").read_bytes()).hexdigest()
    held_out = next(p for p in report["points"] if p["name"] == "held-out scripts")["by_instance"]
    for n in (2, 5, 10):
        assert accuracy[n - 1] >= held_out[str(n)] - SLACK, (n, accuracy[n - 1], held_out[str(n)])
    assert accuracy[9] > 2 / ways  # far above chance (1 / ways) whatever the report says


def test_demo_runs_an_episode_of_held_out_characters_and_draws_it(served, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    _, server, folder = served
    name, ways = folder.name, WAYS[folder.name]
    plot = tmp_path / "episode.png"
    code = demo_main(["one_shot", "--model", name, "--target", server.target, "--later-s", "0",
                      "--later-samples", "10", "--plot", str(plot)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert f"held-out scripts of {name}: 20" in printed and "accuracy by instance" in printed
    assert f"chance is {100 / ways:.0f}%" in printed
    assert plot.stat().st_size > 10_000


def test_demo_refuses_a_digit_task_on_the_glyph_model(served, capsys: pytest.CaptureFixture[str]) -> None:
    _, server, folder = served
    code = demo_main(["one_shot_synthetic", "--model", folder.name, "--target", server.target, "--later-s", "0"])
    assert code == 1 and f"takes {400 + WAYS[folder.name]} inputs per step" in capsys.readouterr().out


def test_the_5_way_glyph_model_ships() -> None:
    assert "one_shot_glyphs" in SHIPPED  # the tests above run on every glyph model that ships, this one always
