"""Sequence data sets on disk: trained on as they are, exported with parity, served and stepped through the real
server; the kinds of target (bits, class ids, reals), masks and lengths, shards and memory-mapped folders; and bad
data refused before anything is written, each problem named by key and index."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import service_config

from ntm_serve.client.sdk import NTMClient
from ntm_serve.export.parity import check_folder
from ntm_serve.server.server import ServerThread
from ntm_serve.training.__main__ import main
from ntm_serve.training.checkpoint import load_model
from ntm_serve.training.dataset import SPLIT_SEED, assemble, dataset_task, splits
from ntm_serve.training.dataset_files import DataError, check_values, shard_of

TINY = '{"controller_size": 32, "memory_rows": 8, "memory_width": 4}'


def reverse_arrays(sequences: int = 600, longest: int = 3, width: int = 3, seed: int = 0) -> dict[str, np.ndarray]:
    """Reverse: L random vectors, a delimiter, then the L vectors last first; scored only on those last L steps
    (mask), each sequence 2L + 1 steps long (lengths) in arrays of 2 * longest + 1 steps."""
    rng = np.random.default_rng(seed)
    steps = 2 * longest + 1
    inputs = np.zeros((sequences, steps, width + 1), np.float32)
    targets = np.zeros((sequences, steps, width), np.float32)
    mask = np.zeros((sequences, steps), np.float32)
    n = rng.integers(1, longest + 1, sequences)
    for s in range(sequences):
        bits = rng.integers(0, 2, (n[s], width))
        inputs[s, : n[s], :width] = bits
        inputs[s, n[s], width] = 1.0
        targets[s, n[s] + 1 : 2 * n[s] + 1] = bits[::-1]
        mask[s, n[s] + 1 : 2 * n[s] + 1] = 1.0
    inputs[np.arange(steps)[None, :] >= (2 * n + 1)[:, None]] = np.nan  # padding may hold anything: never read
    return {"inputs": inputs, "targets": targets, "mask": mask, "lengths": 2 * n + 1}


def echo_arrays(kind: str, sequences: int = 400, steps: int = 6, seed: int = 1) -> dict[str, np.ndarray]:
    """A one-step delayed echo of the input: class ids (the previous step's one-hot), or reals (half the previous
    step's values). Every step but the first counts."""
    rng = np.random.default_rng(seed)
    mask = np.ones((sequences, steps), np.float32)
    mask[:, 0] = 0.0
    if kind == "classes":
        ids = rng.integers(0, 3, (sequences, steps))
        inputs = np.eye(3, dtype=np.float32)[ids]  # (S, T, 3)
        targets = np.concatenate([np.full((sequences, 1), -1), ids[:, :-1]], axis=1).astype(np.int64)
        return {"inputs": inputs, "targets": targets, "mask": mask}
    inputs = rng.uniform(-1, 1, (sequences, steps, 2)).astype(np.float32)
    targets = np.concatenate([np.zeros((sequences, 1, 2), np.float32), 0.5 * inputs[:, :-1]], axis=1)
    return {"inputs": inputs, "targets": targets, "mask": mask}


def save(path: Path, arrays: dict[str, np.ndarray], **meta: object) -> Path:
    np.savez(path, **arrays, **{k: np.array(v) for k, v in meta.items()})
    return path


def train(data: Path, out: Path, *flags: str) -> int:
    return main(["--data", str(data), "--out", str(out), "--ntm", TINY, "--lr", "1e-2", "--device", "cpu", *flags])


# ---------------------------------------------------------------- a data set, end to end


@pytest.fixture(scope="module")
def reverse_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reverse data set trained to a low error (8000 sequences, about 15 s of CPU), then exported."""
    root = tmp_path_factory.mktemp("reverse")
    data = save(root / "reverse.npz", reverse_arrays(), name="reverse", encoding="reverse, 3-bit vectors")
    out = root / "models" / "reverse"
    assert train(data, out, "--sequences", "16000", "--eval-every", "2000", "--stop-below", "0.01") == 0
    from ntm_serve.export.__main__ import main as export_main

    assert export_main([str(out)]) == 0
    return out


def test_a_data_set_trains_to_a_low_error_and_writes_a_model_folder(reverse_model: Path) -> None:
    for name in ("checkpoint.pt", "config.json", "command.txt", "train_log.jsonl", "learning_curve.png",
                 "eval.json", "eval.md", "example.png", "step.onnx", "sequence.onnx", "initial_state.onnx"):
        assert (reverse_model / name).is_file(), name
    assert not (reverse_model / "resume.pt").exists() and (reverse_model / ".resume" / "resume.pt").is_file()
    report = json.loads((reverse_model / "eval.json").read_text())
    validation = next(p for p in report["points"] if p["name"] == "validation split")
    assert validation["sequences"] == 60 and validation["bit_errors"] < 0.1, report["points"]  # untrained: ~3
    assert (reverse_model / "command.txt").read_text().startswith("python -m ntm_serve.training --data ")
    meta = json.loads((reverse_model / "config.json").read_text())
    assert (meta["task"], meta["encoding"], meta["output_activation"]) == ("reverse", "reverse, 3-bit vectors",
                                                                           "sigmoid")


def test_a_data_set_model_exports_with_parity(reverse_model: Path) -> None:
    rows, ckpt = check_folder(reverse_model, "cpu", steps=60, batch=2, ops=False)
    assert ckpt.task == "reverse" and ckpt.output_activation == "sigmoid"
    failed = [r.check for r in rows if not r.passed]
    assert not failed and any("rounded output bits" in r.check for r in rows)


def test_a_data_set_model_is_served_and_stepped(reverse_model: Path) -> None:
    """ListModels names the data set's task and encoding; stepping a session reverses a sequence, and the served
    outputs are the trained model's."""
    model, _ = load_model(reverse_model)
    bits = np.array([[1, 0, 1], [0, 1, 1], [1, 1, 0]], np.float32)  # L = 3
    inputs = np.zeros((7, 4), np.float32)
    inputs[:3, :3], inputs[3, 3] = bits, 1.0
    with torch.no_grad():
        expected = torch.sigmoid(model(torch.from_numpy(inputs)[:, None])[0][:, 0]).numpy()  # (7, 3)
    with ServerThread(service_config(reverse_model.parent)) as server, NTMClient(server.target, timeout=60) as client:
        info = next(m for m in client.list_models() if m.name == "reverse")
        assert (info.task, info.encoding, info.output_activation) == ("reverse", "reverse, 3-bit vectors", "sigmoid")
        session = client.create_session("reverse").session_id
        first = client.step(session, inputs[:4]).outputs  # the sequence and its delimiter, one call
        rest = np.stack([client.step(session, x).outputs[0] for x in inputs[4:]])  # then one step per call
    served = np.concatenate([first, rest])  # (7, 3)
    np.testing.assert_allclose(served, expected, atol=1e-5)
    assert np.array_equal(served[4:] > 0.5, bits[::-1] > 0.5)


# ---------------------------------------------------------------- kinds of target, layouts, splits


@pytest.mark.parametrize("kind", ["classes", "reals"])
def test_class_ids_and_reals_pick_their_loss_outputs_and_figure(tmp_path: Path, kind: str) -> None:
    data = save(tmp_path / f"echo_{kind}.npz", echo_arrays(kind))
    out = tmp_path / kind
    assert train(data, out, "--sequences", "4000", "--eval-every", "1000") == 0
    meta = json.loads((out / "config.json").read_text())
    report = json.loads((out / "eval.json").read_text())
    validation = report["points"][-1]
    if kind == "classes":
        assert (meta["output_activation"], meta["output_size"], meta["task"]) == ("softmax", 3, "echo_classes")
        assert validation["accuracy"] > 0.95, validation  # chance: 1/3
    else:
        assert (meta["output_activation"], meta["output_size"]) == ("identity", 2)
        assert validation["mse"] < 0.01, validation  # predicting 0: about 1/12
    assert "mean squared error" in (out / "eval.md").read_text() or kind == "classes"


def test_shards_and_memory_mapped_folders_are_one_data_set(tmp_path: Path) -> None:
    arrays = reverse_arrays(sequences=50)
    shards = tmp_path / "shards"
    shards.mkdir()
    save(shards / "a.npz", {k: v[:20] for k, v in arrays.items()})
    save(shards / "b.npz", {k: v[20:] for k, v in arrays.items()})
    mapped = tmp_path / "mapped"
    mapped.mkdir()
    for key, value in arrays.items():
        np.save(mapped / f"{key}.npy", value)
    one = save(tmp_path / "one.npz", arrays)
    batches = []
    for path in (one, shards, mapped):
        _, train_split, held = splits(path, 0.2)
        assert (train_split.size, held.size) == (40, 10)
        batches.append(held(torch.Generator().manual_seed(3), 8))
    for other in batches[1:]:
        for a, b in zip(batches[0], other, strict=True):
            assert torch.equal(a, b)
    assert isinstance(splits(mapped, 0.2)[0].shards[0].inputs, np.memmap)


def test_a_batch_is_cut_at_its_longest_sequence_and_padding_never_counts() -> None:
    arrays = reverse_arrays(sequences=40, longest=3)

    shard = shard_of("mem", arrays)
    check_values(shard)  # the NaN padding past each length is not a problem
    data = assemble([shard])
    short = np.flatnonzero(arrays["lengths"] == 3)[:2]  # L = 1: 3 steps
    batch = data.batch(short)
    assert batch.inputs.shape == (3, 2, 4) and bool(torch.isfinite(batch.inputs).all())
    assert batch.mask.tolist() == [[0, 0], [0, 0], [1, 1]]
    mixed = data.batch(np.array([short[0], int(np.flatnonzero(arrays["lengths"] == 7)[0])]))
    assert mixed.inputs.shape[0] == 7 and float(mixed.mask[3:, 0].sum()) == 0  # past the short one's length


def test_validation_is_a_fixed_draw_or_a_second_file(tmp_path: Path) -> None:
    path = save(tmp_path / "d.npz", reverse_arrays(sequences=100))
    _, train_a, held_a = splits(path, 0.25)
    _, _, held_b = splits(path, 0.25)
    assert held_a.size == 25 and np.array_equal(held_a.indices, held_b.indices)  # the same every run
    assert not set(train_a.indices) & set(held_a.indices)
    expected = np.sort(np.random.default_rng(SPLIT_SEED).permutation(100)[:25])
    assert np.array_equal(held_a.indices, expected)
    other = save(tmp_path / "v.npz", reverse_arrays(sequences=30, seed=9))
    task = dataset_task(str(path), validation=str(other))
    assert task.heldout.size == 30 and task.sample.size == 100


# ---------------------------------------------------------------- bad data: refused before training


def _bad(case: str) -> tuple[dict[str, np.ndarray], str]:
    """A broken data set and the words its refusal must contain (the key and the index)."""
    a = reverse_arrays(sequences=20)
    if case == "missing key":
        del a["targets"]
        return a, "no 'targets' key"
    if case == "unknown key":
        a["target"] = a.pop("targets")
        return a, "unknown key(s) ['target']"
    if case == "targets disagree":
        a["targets"] = a["targets"][:, :-1]
        return a, "targets has shape (20, 6, 3); want [S, T, O] with [S, T] = (20, 7)"
    if case == "mask shape":
        a["mask"] = a["mask"][:-1]
        return a, "mask has shape (19, 7)"
    if case == "lengths out of range":
        a["lengths"][4] = 9
        return a, "lengths[4] = 9"
    if case == "nan input":
        a["inputs"][3, 0, 2] = np.nan
        return a, "inputs[3, 0, 2] = nan is not finite"
    if case == "inf target":
        a["targets"][5, int(a["lengths"][5]) - 1, 1] = np.inf
        return a, f"targets[5, {int(a['lengths'][5]) - 1}, 1] = inf is not finite"
    if case == "mask counts nothing":
        a["mask"][6] = 0.0
        return a, "mask[6] counts no step"
    if case == "mask not 0 or 1":
        a["mask"][2, 0] = 0.5
        return a, "mask[2, 0] = 0.5 is not 0 or 1"
    c = echo_arrays("classes", sequences=20)
    if case == "negative class id":
        c["targets"][7, 3] = -2
        return c, "targets[7, 3] = -2 is a negative class id"
    if case == "class id past classes":
        c["classes"] = np.array(2)
        return c, "is outside the class ids 0..1 (classes = 2)"
    raise AssertionError(case)


BAD = ["missing key", "unknown key", "targets disagree", "mask shape", "lengths out of range", "nan input",
       "inf target", "mask counts nothing", "mask not 0 or 1", "negative class id", "class id past classes"]


@pytest.mark.parametrize("case", BAD)
def test_bad_data_is_named_and_nothing_is_written(tmp_path: Path, case: str,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    arrays, words = _bad(case)
    data = save(tmp_path / "bad.npz", arrays)
    out = tmp_path / "out"
    assert train(data, out, "--sequences", "16") == 2
    err = capsys.readouterr().err
    assert words in err and str(data) in err, err
    assert not out.exists()


@pytest.mark.parametrize("validation", ["0.01", "0.999"])
def test_an_empty_split_is_refused(tmp_path: Path, validation: str, capsys: pytest.CaptureFixture[str]) -> None:
    data = save(tmp_path / "small.npz", reverse_arrays(sequences=20))
    out = tmp_path / "out"
    assert train(data, out, "--validation", validation) == 2
    which = "validation" if validation == "0.01" else "training"
    assert f"the {which} split is empty" in capsys.readouterr().err
    assert not out.exists()


def test_a_validation_file_that_disagrees_is_refused(tmp_path: Path) -> None:
    data = save(tmp_path / "d.npz", reverse_arrays(sequences=20))
    other = save(tmp_path / "v.npz", reverse_arrays(sequences=20, width=4))
    with pytest.raises(DataError, match=r"input channels I is 5, but the training data .* has 4"):
        dataset_task(str(data), validation=str(other))
    with pytest.raises(DataError, match="no such file or folder"):
        dataset_task(str(tmp_path / "absent.npz"))
