"""One-shot tasks (issue 11): the encoding, the class split, the metric, LRU heads, a training smoke run, the
numpy encoding the client uses, and the served model (ListModels, accuracy on held-out classes, bad input)."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch

from ntm_serve.demos import one_shot_np
from ntm_serve.training import lru, one_shot
from ntm_serve.training.config import NTMConfig
from ntm_serve.training.tasks import get_task

ROOT = Path(__file__).resolve().parents[2]


# --- encoding ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("task", ["one_shot", "one_shot_synthetic"])
def test_label_arrives_one_step_late_as_a_one_hot(task: str) -> None:
    spec = get_task(task)
    batch = spec.sample(torch.Generator().manual_seed(0), 8)
    steps = one_shot.EPISODE_STEPS
    assert batch.inputs.shape == (steps, 8, 69) and batch.targets.shape == (steps, 8, 5)
    assert torch.equal(batch.targets.sum(-1), torch.ones(steps, 8))  # one-hot targets
    assert set(batch.targets.unique().tolist()) == {0.0, 1.0}
    previous = batch.inputs[:, :, one_shot.FEATURES :]
    assert torch.equal(previous[0], torch.zeros(8, 5))  # nothing before the first step
    assert torch.equal(previous[1:], batch.targets[:-1])  # step t carries step t-1's label
    assert torch.all((batch.inputs[:, :, : one_shot.FEATURES] >= 0) & (batch.inputs[:, :, : one_shot.FEATURES] <= 1))
    assert torch.all(batch.targets.sum(0) >= 1)  # every one of the 5 labels appears in every episode


def test_labels_are_drawn_afresh_every_episode() -> None:
    """The same class gets different labels in different episodes: a model cannot memorise labels."""
    batch = get_task("one_shot").sample(torch.Generator().manual_seed(1), 200)
    first_image = batch.inputs[0, :, : one_shot.FEATURES]  # (B, 64)
    labels = batch.targets[0].argmax(-1)  # (B,)
    assert len(labels.unique()) == 5 and first_image.std(0).sum() > 0


def test_numpy_encoding_equals_torch_encoding_on_the_same_content() -> None:
    rng = np.random.default_rng(0)
    features = rng.random((50, 64)).astype(np.float32)
    labels = rng.integers(0, 5, 50)
    inputs, targets = one_shot_np.encode_episode(features, labels)
    batch = one_shot.encode_episode(torch.from_numpy(features)[:, None], torch.from_numpy(labels)[:, None])
    np.testing.assert_array_equal(inputs, batch.inputs[:, 0].numpy())
    np.testing.assert_array_equal(targets, batch.targets[:, 0].numpy())
    assert inputs.dtype == np.float32


def test_numpy_classes_equal_torch_classes_and_episodes_use_only_held_out_digits() -> None:
    split = one_shot.split_description()
    classes = one_shot_np.test_classes(json.dumps({"class_split": split}))
    assert classes == [tuple(c) for c in one_shot.digit_classes(one_shot.HELD_OUT_DIGITS)]
    pool = one_shot.digit_pool("test")
    torch_rows = {row.numpy().tobytes() for row in pool.samples}
    numpy_rows = {row.tobytes() for d, k in classes for row in one_shot_np.digit_class(d, k)}
    assert numpy_rows == torch_rows  # the same images, turned the same way
    episode = one_shot_np.digit_episode(np.random.default_rng(3), classes)
    assert all(row.tobytes() in torch_rows for row in episode.inputs[:, :64])
    assert (episode.inputs[1:, 64:] == episode.targets[:-1]).all() and not episode.inputs[0, 64:].any()
    later = one_shot_np.more_samples(np.random.default_rng(4), episode, 10)
    assert (later.inputs[0, 64:] == episode.targets[-1]).all()  # the stream continues: last label one step late
    assert all(row.tobytes() in torch_rows for row in later.inputs[:, :64])


def test_instance_counting_and_accuracy_agree_between_numpy_and_torch() -> None:
    batch = get_task("one_shot_synthetic").sample(torch.Generator().manual_seed(2), 1)
    logits = torch.randn(50, 1, 5, generator=torch.Generator().manual_seed(3))
    hits, seen = one_shot.accuracy_by_instance(logits, batch.targets)
    labels = batch.targets[:, 0].argmax(-1).numpy()
    np_hits, np_seen = one_shot_np.accuracy_by_instance(logits[:, 0].numpy(), labels)
    np.testing.assert_array_equal(hits.numpy(), np_hits)
    np.testing.assert_array_equal(seen.numpy(), np_seen)
    assert seen[0] == 5  # every class is seen a first time
    assert one_shot_np.instance_index(np.array([2, 2, 0, 2, 0])).tolist() == [1, 2, 1, 3, 2]


# --- the class split ---------------------------------------------------------------------------------------------


def test_rotations_that_coincide_are_dropped() -> None:
    classes = set(one_shot.digit_classes())
    for digit in (0, 1, 8):  # 180 degrees maps them onto themselves
        assert {k for d, k in classes if d == digit} == {0, 1}
    for digit in (6, 9):  # 6 turned 180 degrees is a 9
        assert {k for d, k in classes if d == digit} == {0, 1}
    for digit in (2, 3, 4, 5, 7):
        assert {k for d, k in classes if d == digit} == {0, 1, 2, 3}
    assert len(classes) == 30


def test_class_split_never_leaks_a_held_out_class_into_training() -> None:
    train = one_shot.digit_classes(one_shot.split_digits("train"))
    test = one_shot.digit_classes(one_shot.split_digits("test"))
    assert not {d for d, _ in train} & {d for d, _ in test}
    assert {d for d, _ in test} == set(one_shot.HELD_OUT_DIGITS)
    held_out_rows = {row.numpy().tobytes() for row in one_shot.digit_pool("test").samples}
    batch = get_task("one_shot").sample(torch.Generator().manual_seed(5), 400)  # 20,000 training samples
    seen = {row.numpy().tobytes() for row in batch.inputs[:, :, : one_shot.FEATURES].reshape(-1, 64)}
    assert not seen & held_out_rows
    assert len(seen) > 1000  # and training does draw from many different samples


def test_permuted_training_episodes_shuffle_pixels_per_episode_and_only_for_training() -> None:
    gen = torch.Generator().manual_seed(7)
    features = torch.rand(50, 400, 64, generator=gen)
    out = one_shot.permuted(torch.Generator().manual_seed(8), features, 0.5)
    same = (out == features).all(-1).all(0)  # (B,) episodes left alone
    assert 150 < int(same.sum()) < 250  # about half
    # every episode: the same multiset of pixels, moved by one permutation shared by all its steps
    assert torch.equal(out.sort(-1).values, features.sort(-1).values)
    moved = (~same).nonzero()[0, 0]
    order = [int((features[0, moved] == v).nonzero()[0, 0]) for v in out[0, moved]]
    assert torch.equal(out[:, moved], features[:, moved][:, order])
    spec = get_task("one_shot", permute=0.5)
    assert spec.sample is not get_task("one_shot").sample
    assert spec.eval_points == get_task("one_shot").eval_points  # evaluation stays on the plain task
    with pytest.raises(ValueError, match="no option 'permute' \\(permute is an option of one_shot\\)"):
        get_task("copy", permute=0.5)


# --- LRU heads ---------------------------------------------------------------------------------------------------


def test_least_used_breaks_ties_by_first_row_and_skips_used_rows() -> None:
    usage = torch.tensor([[0.0, 0.0, 0.0, 0.0], [3.0, 1.0, 2.0, 0.5]])
    assert lru.least_used(usage, 1).tolist() == [[1, 0, 0, 0], [0, 0, 0, 1]]
    assert lru.least_used(usage, 2).tolist() == [[1, 1, 0, 0], [0, 1, 0, 1]]


def test_lru_model_fills_fresh_rows_and_keeps_usage_in_memory() -> None:
    from ntm_serve.training.model import NTM

    torch.manual_seed(0)
    config = NTMConfig(69, 5, controller_size=16, memory_rows=8, memory_width=4, heads="lru")
    model = NTM(config)
    assert config.memory_columns == 5 and model.initial_state(1).memory.shape == (1, 8, 5)
    with torch.no_grad():
        model.write_proj.linear.bias[4 + 1] = -20.0  # gate (after the key and beta) -> 0: always the least-used row
        _, state, _, writes = model(torch.rand(6, 1, 69))
    assert writes[:, 0, 0].argmax(-1).tolist() == [0, 1, 2, 3, 4, 5]  # one fresh row per step
    usage = state.memory[0, :, 4]  # the usage column: written rows are more used than the rest
    assert usage[6:].max() < usage[:6].min()
    assert NTMConfig(9, 8).to_dict().keys().isdisjoint({"heads", "usage_decay"})  # old configs keep their bytes
    assert NTMConfig.from_dict(config.to_dict()) == config


def test_lru_rows_sets_how_many_least_used_rows_a_write_takes() -> None:
    from ntm_serve.training.model import NTM

    x = torch.rand(5, 1, 69)
    for rows, expected in ((0, 2), (1, 1)):  # 0: as many as read heads (Santoro et al.); 1: one row per step
        torch.manual_seed(0)
        model = NTM(NTMConfig(69, 5, controller_size=16, memory_rows=16, memory_width=4, read_heads=2,
                              heads="lru", lru_rows=rows))
        with torch.no_grad():
            model.write_proj.linear.bias[4 + 1] = -20.0  # gate -> 0: the least-used rows only
            _, _, _, writes = model(x)
        taken = (writes[:, 0, 0] > 0.1).sum(-1)  # (T,) rows written at each step
        assert taken.tolist() == [expected] * 5
        assert (writes[:, 0, 0] > 0.1).sum(0).max() == 1  # fresh rows every step: none written twice
    with pytest.raises(ValueError, match="lru_rows"):
        NTMConfig(69, 5, memory_rows=8, heads="lru", lru_rows=9)


def test_read_skips_new_leaves_the_renewed_rows_unread() -> None:
    """read_skips_new: the read heads give no weight to the rows renewed this step (the sample just written), and
    their weights still sum to 1; the option is refused where it cannot hold, and old configs keep their bytes."""
    from ntm_serve.training import addressing
    from ntm_serve.training.model import NTM

    memory, key = torch.rand(2, 5, 3), torch.rand(2, 4, 3)  # (B, N, M), (B, H, M)
    key[:, :, :] = memory[:, :1, :]  # every head's best match is row 0 ...
    skip = torch.tensor([[1.0, 0, 0, 0, 0], [0, 0, 1, 1, 0]])  # ... which batch entry 0 skips
    w = addressing.content_weighting(memory, key, torch.full((2, 4), 50.0), skip)  # (B, H, N)
    assert (w * skip.unsqueeze(1)).sum() == 0 and torch.allclose(w.sum(-1), torch.ones(2, 4))
    assert (w[1, :, 0] > 0.5).all()  # entry 1 may still read row 0
    torch.manual_seed(0)
    config = NTMConfig(69, 5, controller_size=16, memory_rows=8, memory_width=4, read_heads=2, write_heads=2,
                       heads="lru", lru_rows=1, heads_see_input=True, write_follows=True, read_skips_new=True)
    model = NTM(config)
    with torch.no_grad():
        model.write_proj.linear.bias[4 + 1] = -20.0  # gate -> 0: head 1 writes each sample to the least-used row
        _, _, reads, writes = model(torch.rand(6, 3, 69))  # (T, B, R, N), (T, B, W, N)
    renewed = (writes[:, :, :1] > 0.5).float()  # (T, B, 1, N): the row head 1 wrote at each step
    assert (reads * renewed).sum() == 0 and torch.allclose(reads.sum(-1), torch.ones(6, 3, 2))
    assert NTMConfig.from_dict(config.to_dict()) == config
    three = NTMConfig(69, 5, memory_rows=8, read_heads=2, heads="lru", lru_rows=3, read_skips_new=True)
    assert three.rows_range[0] == 4  # a memory must keep a row to read besides the three renewed
    assert "read_skips_new" not in NTMConfig(69, 5).to_dict()
    for bad in ({"heads": "ntm"}, {"memory_rows": 3, "lru_rows": 3}):
        with pytest.raises(ValueError, match="read_skips_new"):
            NTMConfig(69, 5, read_heads=2, **{"heads": "lru", "read_skips_new": True, **bad})


def test_input_skip_starts_at_zero_so_a_warm_start_begins_as_its_source() -> None:
    from ntm_serve.training.model import NTM
    from ntm_serve.training.transplant import transplant

    torch.manual_seed(0)
    base = NTMConfig(69, 5, controller_size=16, memory_rows=8, memory_width=4, read_heads=2, heads="lru")
    source = NTM(base).eval()
    target = NTM(NTMConfig(**{**base.to_dict(), "heads_see_input": True})).eval()
    transplant(source, target)
    assert target.read_proj.skip is not None and source.read_proj.skip is None
    x = torch.rand(7, 2, 69)
    with torch.no_grad():
        assert torch.equal(source(x)[0], target(x)[0])  # the zero skip adds nothing
        target.read_proj.skip.weight.normal_()
        assert not torch.allclose(source(x)[0], target(x)[0])  # a trained skip does change the keys
    assert NTMConfig(9, 8).to_dict().keys().isdisjoint({"lru_rows", "heads_see_input"})  # old configs unchanged


# --- training and evaluation -------------------------------------------------------------------------------------


def test_training_smoke_run_and_accuracy_by_instance_report(tmp_path: Path) -> None:
    from ntm_serve.training.evaluate import evaluate_folder
    from ntm_serve.training.train import TrainConfig, train

    cfg = TrainConfig(task="one_shot", out=str(tmp_path), batch_size=4, sequences=16, eval_every=8,
                      eval_sequences=8, ntm={"controller_size": 16, "memory_rows": 8, "memory_width": 4,
                                             "heads": "lru"})
    result = train(cfg, progress=False)
    assert result["sequences"] == 16 and 0 <= result["eval_bit_errors"] <= 50
    rows = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert [r["sequences"] for r in rows] == [8, 16]
    assert 1.0 < rows[0]["loss"] < 2.5  # softmax cross-entropy near ln 5 = 1.61 at the start, not BCE
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["class_split"]["held_out_digits"] == list(one_shot.HELD_OUT_DIGITS)
    report = evaluate_folder(tmp_path, sequences=20, batch_size=10)
    assert [p["name"] for p in report["points"]] == ["training classes", "held-out classes"]
    held_out = report["points"][1]
    assert held_out["episodes"] == 20 and held_out["counts"]["1"] == 100  # 5 first sights per episode
    assert set(held_out["by_instance"]) == {str(n) for n in range(1, 11)}
    assert held_out["target"] == "2nd >= 85%, 10th >= 95%" and held_out["met"] is False  # untrained
    assert "| held-out classes |" in (tmp_path / "eval.md").read_text()
    assert (tmp_path / "example.png").stat().st_size > 10_000


def test_diagnosis_reports_every_kind_of_episode(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from ntm_serve.export.testing import DEV_CONFIGS, make_dev_checkpoint
    from ntm_serve.training.one_shot_diagnose import SAMPLERS, main
    from ntm_serve.training.one_shot_eval import INSTANCES

    make_dev_checkpoint(tmp_path, *DEV_CONFIGS["one_shot_lru_skip"])
    assert main([str(tmp_path), "--episodes", "4"]) == 0
    table = capsys.readouterr().out
    for name in SAMPLERS:  # training / held-out classes, each plain and permuted, and the synthetic task
        assert f"| {name} |" in table
    assert table.count(" %") == len(SAMPLERS) * (len(INSTANCES) + 1)  # the instances and all steps per row


# --- served ------------------------------------------------------------------------------------------------------

SERVED_EPISODES = 40  # small for CI; the >= 1000-episode figures are eval.md's
# Bars for the served model on held-out classes over SERVED_EPISODES episodes (the full-size targets are
# checked on >= 1000 episodes in models/one_shot/eval.json): well above chance (20%), below the measured figures.
SERVED_BARS = {2: 0.60, 10: 0.80}
# one_shot_follow (write_follows: 85.1 % / 97.6 % at the 2nd / 10th instance in its eval.md) is held higher.
SERVED_MODELS = {"one_shot": SERVED_BARS, "one_shot_follow": {2: 0.75, 10: 0.90}}


@pytest.fixture(scope="module")
def one_shot_info(client, models_dir: Path):  # -> ntm_pb2.ModelInfo
    if not (models_dir / "one_shot").is_dir():
        pytest.skip("no shipped models/one_shot (checkpoint + graphs)")
    return {m.name: m for m in client.list_models()}["one_shot"]


@pytest.fixture(scope="module")
def client(server):  # module scope: the conftest one is per test
    from ntm_serve.client.sdk import NTMClient

    with NTMClient(server.target, timeout=60) as c:
        yield c


def test_list_models_says_what_the_outputs_are(client, one_shot_info, models_dir: Path) -> None:
    assert one_shot_info.output_activation == "softmax" and one_shot_info.output_size == 5
    assert one_shot_info.input_size == 69
    split = json.loads(one_shot_info.task_metadata)["class_split"]
    assert split == json.loads((models_dir / "one_shot" / "config.json").read_text())["class_split"]
    for info in client.list_models():  # the bit tasks' models: unchanged contract, sigmoid outputs, no metadata
        if not info.task.startswith("one_shot"):
            assert (info.output_activation, info.task_metadata) == ("sigmoid", ""), info.name


@pytest.mark.parametrize("name", list(SERVED_MODELS))
def test_served_session_learns_held_out_classes(client, one_shot_info, models_dir: Path, name: str,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """Episodes of held-out classes through real sessions: probabilities as offline torch, accuracy above a bar."""
    from ntm_serve.training.checkpoint import load_model

    if not (models_dir / name / "step.onnx").is_file():
        pytest.skip(f"no shipped models/{name} graphs")
    model, _ = load_model(models_dir / name)
    classes = one_shot_np.test_classes(one_shot_info.task_metadata)
    rng = np.random.default_rng(2016)
    hits, seen = np.zeros(10), np.zeros(10)
    for i in range(SERVED_EPISODES):
        episode = one_shot_np.digit_episode(rng, classes)
        session = client.create_session(name)
        out = client.step(session.session_id, episode.inputs).outputs  # (50, 5)
        client.delete_session(session.session_id)
        np.testing.assert_allclose(out.sum(-1), 1.0, atol=1e-5)  # a distribution over 5 labels
        if i == 0:
            with torch.no_grad():
                expected = torch.softmax(model(torch.from_numpy(episode.inputs)[:, None])[0][:, 0], -1).numpy()
            np.testing.assert_allclose(out, expected, atol=1e-4)
            assert (out.argmax(-1) == expected.argmax(-1)).all()
        h, s = one_shot_np.accuracy_by_instance(out, episode.labels)
        hits, seen = hits + h, seen + s
    accuracy = hits / np.maximum(seen, 1)
    with capsys.disabled():  # the figure is the report
        print(f"\n  served {name}, {SERVED_EPISODES} held-out episodes, accuracy by instance 1..10: "
              + " ".join(f"{a:.2f}" for a in accuracy))
    # A class's first sight is a guess among the labels not yet used in the episode: at best 1/5, 1/4, .., 1/1 for the
    # 5 classes in turn, 45.7 % on average; 0.6 leaves room for 40 episodes' noise and still catches a label leak.
    assert accuracy[0] < 0.6
    for instance, bar in SERVED_MODELS[name].items():
        assert accuracy[instance - 1] >= bar, (instance, accuracy[instance - 1])


def test_wrong_width_is_refused_and_changes_nothing(client, one_shot_info) -> None:
    session = client.create_session("one_shot")
    episode = one_shot_np.synthetic_episode(np.random.default_rng(0))
    for bad in (episode.inputs[:, :68], np.hstack([episode.inputs, episode.inputs[:, :1]])):
        with pytest.raises(grpc.RpcError) as err:
            client.step(session.session_id, bad)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "69" in err.value.details()
    assert client.get_session(session.session_id).steps == 0
    fresh = client.create_session("one_shot")
    a = client.step(session.session_id, episode.inputs).outputs
    b = client.step(fresh.session_id, episode.inputs).outputs
    np.testing.assert_array_equal(a, b)  # the refused requests left no trace in the state
    for s in (session, fresh):
        client.delete_session(s.session_id)


def test_demo_streams_an_episode_then_recognises_new_samples(server, one_shot_info, capsys, tmp_path: Path) -> None:
    from ntm_serve.demos.__main__ import main

    plot = tmp_path / "episode.png"
    assert main(["one_shot", "--target", server.target, "--seed", "1", "--later-s", "0.2", "--plot", str(plot)]) == 0
    printed = capsys.readouterr().out
    assert "held-out classes of one_shot: 12" in printed
    assert printed.count(" ok") + printed.count("WRONG") == 50
    assert "accuracy by instance: 1:" in printed
    assert "20 new samples of the same classes, new stream, same session (now at 70 steps)" in printed
    assert plot.stat().st_size > 10_000


def test_demo_refuses_a_model_without_label_outputs(server, capsys) -> None:
    from ntm_serve.demos.__main__ import main

    assert main(["one_shot", "--target", server.target, "--model", "copy"]) == 1
    assert "does not output label probabilities" in capsys.readouterr().out


def test_nearest_neighbour_reference_uses_only_labels_that_have_arrived() -> None:
    """The weightless reference answers with the label of the closest earlier sample, known one step late."""
    from ntm_serve.training.one_shot_reference import NearestNeighbour

    features = torch.zeros(4, 1, 64)
    features[0, 0, 0] = features[2, 0, 0] = 1.0  # steps 0 and 2 show class A; 1 and 3 class B
    features[1, 0, 1] = features[3, 0, 1] = 1.0
    labels = torch.tensor([[3], [1], [3], [1]])  # (T, B)
    batch = one_shot.encode_episode(features, labels)
    logits = NearestNeighbour()(batch.inputs)[0]  # (T, 1, 5)
    # t=1: only step 0 (label 3) is known, so 3 although B is new; t=2, t=3: the matching earlier sample's label
    assert logits[1:, 0].argmax(-1).tolist() == [3, 3, 1]
    flipped = one_shot.synthetic_episodes(torch.Generator().manual_seed(0), 8)
    hits, seen = one_shot.accuracy_by_instance(NearestNeighbour()(flipped.inputs)[0], flipped.targets)
    assert hits[1] / seen[1] > 0.95  # 10 % bit flips: a second sight of a random prototype is easy


def test_a_following_write_head_adds_to_the_row_the_first_head_wrote_last_step() -> None:
    """write_follows: head 2 writes where head 1 wrote one step earlier (the sample's row, when its label comes)."""
    from ntm_serve.training.model import NTM
    from ntm_serve.training.transplant import transplant

    torch.manual_seed(0)
    config = NTMConfig(69, 5, controller_size=16, memory_rows=8, memory_width=4, read_heads=2, write_heads=2,
                       heads="lru", lru_rows=1, heads_see_input=True, write_follows=True)
    model = NTM(config).eval()
    with torch.no_grad():
        writes = model(torch.rand(5, 3, 69))[3]  # (T, B, W, N)
    assert torch.equal(writes[1:, :, 1], writes[:-1, :, 0])  # head 2 at t = head 1 at t - 1
    assert torch.equal(lru.follow_first(writes[1], writes[0])[:, 1], writes[0][:, 0])
    with pytest.raises(ValueError, match="write_follows"):
        NTMConfig(69, 5, heads="lru", write_follows=True)  # one write head: nothing to follow
    source = NTM(NTMConfig(**{**config.to_dict(), "write_heads": 1, "write_follows": False})).eval()
    transplant(source, model)  # the new head is appended: zero keys, small adds
    x = torch.rand(12, 3, 69)
    with torch.no_grad():
        assert torch.allclose(source(x)[0], model(x)[0], atol=0.5)
        assert torch.equal(model.write_proj.linear.weight[:source.write_proj.linear.out_features],
                           source.write_proj.linear.weight)
