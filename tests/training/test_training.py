"""The model as a pure step, its variants and numerics, and the trainer: learning, resume, determinism,
checkpoints, and the evaluation CLI. Small models and budgets: the whole file runs in seconds."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import pytest
import torch

import ntm_serve.training.train as train_module
from ntm_serve.training import addressing
from ntm_serve.training.__main__ import parse
from ntm_serve.training.checkpoint import MODEL_FILE, load_model, resume_path, save_model
from ntm_serve.training.compiled import CHUNKS, chunk_plan, compiled_forward, eager_forward, training_forward
from ntm_serve.training.config import NTMConfig
from ntm_serve.training.device import resolve_device
from ntm_serve.training.evaluate import TARGETS, evaluate_folder, sequences_to_reach
from ntm_serve.training.evaluate import main as evaluate_main
from ntm_serve.training.metrics import bit_errors, sequence_loss
from ntm_serve.training.model import NTM, LSTMBaseline
from ntm_serve.training.progress import Progress
from ntm_serve.training.state import STATE_NAMES, NTMState
from ntm_serve.training.tasks import copy_batch, get_task
from ntm_serve.training.train import TrainConfig, build_model, train

TINY = {"controller_size": 24, "memory_rows": 24, "memory_width": 6}  # big enough for copy L <= 20



def tiny_ntm(**overrides) -> NTM:
    torch.manual_seed(0)
    return NTM(NTMConfig(9, 8, **{**TINY, **overrides}))


# ---------------------------------------------------------------- metrics


def test_bit_errors_and_loss_use_the_last_steps() -> None:
    logits = torch.tensor([[[5.0, 5.0]], [[3.0, -2.0]], [[-1.0, 0.5]]])  # (T=3, B=1, O=2)
    targets = torch.tensor([[[1.0, 1.0]], [[1.0, 1.0]]])  # last 2 steps
    # step 1: (1, 0) vs (1, 1) -> 1 error; step 2: (0, 1) vs (1, 1) -> 1 error; step 0 is not scored
    assert bit_errors(logits, targets).tolist() == [2.0]
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits[1:], targets)
    assert torch.equal(sequence_loss(logits, targets), expected)


# ---------------------------------------------------------------- the model as a pure step


def test_step_is_pure_and_batch_elements_are_independent() -> None:
    model = tiny_ntm()
    batch = get_task("copy").sample(torch.Generator().manual_seed(0), 3)
    with torch.no_grad():
        logits, state, reads, writes = model(batch.inputs)
        for b in range(3):  # each sequence alone gives the same outputs: nothing leaks across the batch
            alone = model(batch.inputs[:, b : b + 1])[0]
            torch.testing.assert_close(alone[:, 0], logits[:, b], rtol=1e-5, atol=1e-5)
        s0 = model.initial_state(3)
        before = [t.clone() for t in s0]
        y1, n1 = model.step(batch.inputs[0], s0)
        y2, n2 = model.step(batch.inputs[0], s0)  # same input and state: same output and next state
    assert torch.equal(y1, y2) and all(torch.equal(a, b) for a, b in zip(n1, n2, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(before, s0, strict=True))  # the state was not modified
    assert NTMState._fields == STATE_NAMES
    t_steps = batch.inputs.shape[0]
    assert reads.shape == (t_steps, 3, 1, 24) and writes.shape == (t_steps, 3, 1, 24)
    assert state.memory.shape == (3, 24, 6)


def test_each_step_writes_first_then_reads() -> None:
    """The read heads address and read the memory the step returns, i.e. after this step's write."""
    model = tiny_ntm(read_heads=2, write_heads=2)
    batch = get_task("copy").sample(torch.Generator().manual_seed(3), 4)
    state = model.initial_state(4)
    with torch.no_grad():
        for t_step, x in enumerate(batch.inputs):
            _, nxt = model.step(x, state)
            assert not torch.allclose(nxt.memory, state.memory)  # the step did write
            r = model.read_proj(nxt.controller_h)

            def read_weights(memory, r=r, state=state):
                return addressing.address(memory, state.read_weights, r.key, r.beta, r.gate, r.shift, r.gamma)

            torch.testing.assert_close(nxt.read_weights, read_weights(nxt.memory))
            if t_step > 0:  # (at step 0 the content weighting is uniform either way)
                assert not torch.allclose(nxt.read_weights, read_weights(state.memory))
            torch.testing.assert_close(nxt.read_vectors, nxt.read_weights @ nxt.memory)
            state = nxt


def test_initial_state_is_part_of_the_model() -> None:
    model = tiny_ntm()
    s = model.initial_state(2)
    assert [tuple(t.shape) for t in s] == [(2, 24), (2, 24), (2, 1, 6), (2, 24, 6), (2, 1, 24), (2, 1, 24)]
    assert torch.equal(s.memory, torch.full((2, 24, 6), 1e-6))  # constant 1e-6 by default
    assert torch.equal(s.read_weights[:, 0, 0], torch.ones(2)) and float(s.write_weights.sum()) == 2.0
    assert "memory0" not in dict(model.named_parameters())  # constant init: a buffer, not trained


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"controller": "feedforward"},
        {"read_heads": 2, "write_heads": 2},
        {"shift_range": 5},
        {"memory_init": "learned"},
    ],
    ids=["lstm", "feedforward", "r2w2", "s5", "learned-memory"],
)
def test_variants_run_forward_and_backward(overrides: dict) -> None:
    model = tiny_ntm(**overrides)
    batch = get_task("copy").sample(torch.Generator().manual_seed(1), 4)
    logits, state, reads, writes = model(batch.inputs)
    r, w = overrides.get("read_heads", 1), overrides.get("write_heads", 1)
    assert reads.shape[2] == r and writes.shape[2] == w and state.read_vectors.shape == (4, r, 6)
    for weights in (reads, writes):  # every head's weighting is a distribution at every step
        torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:-1]), rtol=0, atol=1e-5)
    sequence_loss(logits, batch.targets).backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    if overrides.get("controller") == "feedforward":  # h0, c0 are never read by a feed-forward controller
        assert grads.pop("h0") is None and grads.pop("c0") is None
    assert all(g is not None and bool(torch.isfinite(g).all()) for g in grads.values())
    if overrides.get("memory_init") == "learned":
        assert float(grads["memory0"].abs().sum()) > 0  # the learned initial memory is trained


def test_config_rejects_bad_shift_ranges() -> None:
    for s in (1, 4, 27):
        with pytest.raises(ValueError, match="shift_range"):
            NTMConfig(9, 8, memory_rows=25, shift_range=s)
    with pytest.raises(ValueError, match="controller"):
        NTMConfig(9, 8, controller="gru")  # type: ignore[arg-type]


@pytest.mark.parametrize("controller", ["lstm", "feedforward"])
def test_model_numerics_at_extremes(controller: str) -> None:
    """All-zero memory, huge inputs and huge weights (every head saturated, logits far past the clip):
    outputs are clipped and everything stays finite, forward and backward."""
    model = tiny_ntm(controller=controller, memory_init_value=0.0)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1e3)
    batch = get_task("copy").sample(torch.Generator().manual_seed(2), 3)
    inputs = batch.inputs * 1e6 - 5e5  # entries -5e5 and +5e5
    logits, state, reads, writes = model(inputs)
    assert float(logits.detach().abs().max()) <= model.config.logit_clip
    assert all(bool(torch.isfinite(t).all()) for t in (logits, reads, writes, *state))
    sequence_loss(logits, batch.targets).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None or (name in ("h0", "c0") and controller == "feedforward"), name
        assert p.grad is None or bool(torch.isfinite(p.grad).all()), name


# ---------------------------------------------------------------- the trainer


def small_config(out: Path, **overrides) -> TrainConfig:
    base = {"task": "copy", "out": str(out), "sequences": 160, "batch_size": 16, "eval_every": 48,
            "eval_sequences": 8, "ntm": dict(TINY)}
    return TrainConfig(**{**base, **overrides})


def heldout_loss(model: torch.nn.Module, task: str = "copy") -> float:
    gen = torch.Generator().manual_seed(99)
    with torch.no_grad():
        batches = [get_task(task).sample(gen, 32) for _ in range(4)]
        return sum(float(sequence_loss(model(b.inputs)[0], b.targets)) for b in batches) / len(batches)


def test_short_training_lowers_the_loss(tmp_path: Path) -> None:
    cfg = small_config(tmp_path / "run", sequences=640, eval_every=320, lr=1e-2)
    before = heldout_loss(build_model(cfg, get_task("copy")))  # the same initial weights train() starts from
    result = train(cfg, progress=False)
    latest = build_model(cfg, get_task("copy"))
    latest.load_state_dict(torch.load(resume_path(tmp_path / "run"), weights_only=False)["model"])
    after = heldout_loss(latest)
    assert after < before - 0.005, (before, after)
    shipped, meta = load_model(cfg.out)  # the best of the evaluated models, not necessarily the last
    assert heldout_loss(shipped) < before
    rows = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert [r["sequences"] for r in rows] == [320, 640]
    best = min(rows, key=lambda r: (r["eval_bit_errors"], -r["sequences"]))  # ties go to the later model
    assert result["sequences"] == 640 and meta["sequences_trained"] == best["sequences"]
    assert set(rows[0]) >= {"loss", "bit_errors", "eval_bit_errors", "seconds"}
    assert (tmp_path / "run" / "learning_curve.png").stat().st_size > 0


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return torch.load(folder / MODEL_FILE, weights_only=True)["state_dict"]


def assert_same_weights(a: Path, b: Path) -> None:
    """The shipped (best) checkpoint, the latest weights and the optimizer state are all identical."""
    resume_a = torch.load(resume_path(a), weights_only=False)
    resume_b = torch.load(resume_path(b), weights_only=False)
    for wa, wb in ((weights(a), weights(b)), (resume_a["model"], resume_b["model"])):
        assert wa.keys() == wb.keys()
        for name in wa:
            assert torch.equal(wa[name], wb[name]), name
    opt_a, opt_b = resume_a["optimizer"]["state"], resume_b["optimizer"]["state"]
    assert opt_a.keys() == opt_b.keys()
    for key in opt_a:
        for name in opt_a[key]:
            assert torch.equal(torch.as_tensor(opt_a[key][name]), torch.as_tensor(opt_b[key][name]))
    assert resume_a["sequences"] == resume_b["sequences"]


def log_rows(folder: Path) -> list[dict]:
    rows = [json.loads(line) for line in (folder / "train_log.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    train(small_config(out), progress=False)
    return out


def test_same_seed_same_weights(uninterrupted: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    train(small_config(again), progress=False)
    assert_same_weights(uninterrupted, again)
    assert log_rows(uninterrupted) == log_rows(again)
    other = build_model(small_config(tmp_path / "x", seed=1), get_task("copy")).state_dict()
    assert not torch.equal(other["h0"], weights(uninterrupted)["h0"])  # and the seed matters


def test_interrupted_and_resumed_run_ends_where_the_uninterrupted_run_ends(
    uninterrupted: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "resumed"
    cfg = small_config(out)
    real = get_task("copy")
    calls = {"n": 0}

    def crashing_sample(gen: torch.Generator, batch: int):
        if batch == cfg.batch_size:  # a training batch (held-out evaluation asks for eval_sequences = 8)
            calls["n"] += 1
            if calls["n"] == 8:  # after the checkpoint at 96 sequences, before the one at 144
                raise KeyboardInterrupt
        return real.sample(gen, batch)

    crashing = dataclasses.replace(real, sample=crashing_sample)
    monkeypatch.setattr(train_module, "resolve_task", lambda *args, **kwargs: crashing)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, progress=False)
    monkeypatch.undo()
    assert torch.load(resume_path(out), weights_only=False)["sequences"] == 96  # really cut short

    train(cfg, progress=False)  # resume from resume.pt
    assert_same_weights(uninterrupted, out)
    assert log_rows(uninterrupted) == log_rows(out)


def test_resuming_with_a_larger_budget_continues_the_run(uninterrupted: Path, tmp_path: Path) -> None:
    out = tmp_path / "extended"
    train(small_config(out, sequences=96), progress=False)
    train(small_config(out), progress=False)  # same run, budget raised from 96 to 160
    assert_same_weights(uninterrupted, out)
    assert log_rows(uninterrupted) == log_rows(out)


def test_resume_refuses_a_different_config(uninterrupted: Path) -> None:
    with pytest.raises(ValueError, match="different training config"):
        train(small_config(uninterrupted, lr=0.5), progress=False)


def test_variants_train_and_round_trip_through_checkpoints(tmp_path: Path) -> None:
    """Feed-forward controller, 2 read and 2 write heads, S = 5 and learned memory, all at once, with RMSprop."""
    overrides = {**TINY, "controller": "feedforward", "read_heads": 2, "write_heads": 2, "shift_range": 5,
                 "memory_init": "learned"}
    cfg = small_config(tmp_path / "variant", sequences=48, ntm=overrides, optimizer="rmsprop", lr=1e-3)
    initial = build_model(cfg, get_task("copy")).state_dict()
    train(cfg, progress=False)
    model, meta = load_model(cfg.out)
    assert model.config == NTMConfig(9, 8, **overrides)
    assert not torch.equal(model.state_dict()["memory0"], initial["memory0"])  # learned memory moved
    batch = get_task("copy").sample(torch.Generator().manual_seed(5), 2)
    save_model(model, tmp_path / "copy_of_it", meta)
    again, _ = load_model(tmp_path / "copy_of_it")
    with torch.no_grad():
        assert torch.equal(model(batch.inputs)[0], again(batch.inputs)[0])


COLD_COMPILE_TIMEOUT = 1200  # s: inductor's first compile of the step (C++ builds) took over 300 s on the busy box


def test_chunk_plan_covers_every_length_largest_chunks_first() -> None:
    for steps in range(61):
        plan = chunk_plan(steps)
        assert sum(plan) == steps and set(plan) <= set(CHUNKS) and plan == sorted(plan, reverse=True)
    assert chunk_plan(2 * 7) == [4, 4, 4, 2]  # copy: T - 1 = 2L after the first step, no single steps
    assert chunk_plan(7, (8, 2, 1)) == [2, 2, 2, 1]
    with pytest.raises(ValueError, match="include 1"):
        chunk_plan(6, (4, 2))


def compiled_and_eager_gradients(inputs: torch.Tensor, targets: torch.Tensor) -> list[tuple[torch.Tensor, dict]]:
    """(logits, gradient of every parameter) of the eager and the compiled forward, one fresh tiny model each."""
    results = []
    for forward in (eager_forward, compiled_forward):
        model = tiny_ntm()
        logits = forward(model)(inputs)
        sequence_loss(logits, targets).backward()
        results.append((logits.detach(), {n: p.grad for n, p in model.named_parameters()}))
    return results


@pytest.mark.timeout(COLD_COMPILE_TIMEOUT)
@pytest.mark.parametrize("steps", [11, 8])  # after the first step: chunks 4, 4, 2; and 4, 2, 1 (every graph)
def test_compiled_step_computes_the_eager_logits_and_gradients(steps: int) -> None:
    """--compile differentiates the same function as eager training, float noise aside
    (ntm_serve/training/compiled.py)."""
    batch = copy_batch(torch.Generator().manual_seed(4), 16, 5)  # inputs (11, 16, 9), targets (5, 16, 8)
    eager, compiled = compiled_and_eager_gradients(batch.inputs[:steps], batch.targets)
    (eager_logits, eager_grads), (compiled_logits, compiled_grads) = eager, compiled
    torch.testing.assert_close(compiled_logits, eager_logits, rtol=1e-4, atol=1e-5)
    assert eager_grads.keys() == compiled_grads.keys()
    for name, grad in eager_grads.items():
        torch.testing.assert_close(compiled_grads[name], grad, rtol=1e-3, atol=1e-6, msg=name)


@pytest.mark.timeout(COLD_COMPILE_TIMEOUT)
def test_compiled_forward_reuses_its_graphs_for_every_length() -> None:
    """Copy's 20 lengths (T = 3..41) run on three graphs: the first step and chunks of 4 and 2; none is traced
    again for another length or for another model of the same sizes."""
    from torch._dynamo.utils import counters

    gen = torch.Generator().manual_seed(2)
    before = counters["stats"]["unique_graphs"]
    for model in (tiny_ntm(), tiny_ntm()):
        forward = compiled_forward(model)
        for length in range(1, 21):
            batch = copy_batch(gen, 16, length)
            torch.testing.assert_close(forward(batch.inputs), model(batch.inputs)[0], rtol=1e-4, atol=1e-5)
    assert counters["stats"]["unique_graphs"] - before <= 3


@pytest.mark.timeout(COLD_COMPILE_TIMEOUT)
def test_compiled_training_is_deterministic_resumable_and_follows_eager(tmp_path: Path) -> None:
    """Same seed, same weights; a compiled run resumed without --compile (and the other way round) continues
    with the resuming run's optimiser kernels; and a few hundred optimiser steps compiled end within float noise
    of the same steps eager (compiled chunks and the fused Adam both change summation order only)."""
    runs = [tmp_path / "a", tmp_path / "b"]
    for out in runs:
        train(small_config(out, sequences=48, compile=True), progress=False)
    assert_same_weights(*runs)
    assert optimizer_flags(runs[0]) == {"fused": True, "foreach": None}
    train(small_config(runs[0], sequences=96), progress=False)  # resumed eager: the looped Adam again
    assert optimizer_flags(runs[0]) == {"fused": None, "foreach": None}
    train(small_config(tmp_path / "rms", sequences=32, optimizer="rmsprop", compile=True), progress=False)
    assert optimizer_flags(tmp_path / "rms") == {"fused": None, "foreach": True}

    steps = 200
    long = {"sequences": 16 * steps, "eval_every": 16 * steps}
    train(small_config(tmp_path / "eager", **long), progress=False)
    train(small_config(tmp_path / "compiled", compile=True, **long), progress=False)
    eager, compiled = weights(tmp_path / "eager"), weights(tmp_path / "compiled")
    for name, w in eager.items():
        torch.testing.assert_close(compiled[name], w, rtol=1e-4, atol=1e-5, msg=name)  # measured: 7e-7 at most
    rows = [json.loads((tmp_path / run / "train_log.jsonl").read_text()) for run in ("eager", "compiled")]
    assert rows[1]["loss"] == pytest.approx(rows[0]["loss"], rel=1e-5)  # the mean training loss over the 200 steps
    with pytest.raises(ValueError, match="NTM only"):
        training_forward(LSTMBaseline(9, 8, hidden_size=8, layers=1), compile_step=True)


def optimizer_flags(out: Path) -> dict[str, object]:
    group = torch.load(resume_path(out), weights_only=False)["optimizer"]["param_groups"][0]
    return {"fused": group["fused"], "foreach": group["foreach"]}


def test_compile_without_a_cpp_compiler_is_refused_before_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty PATH: no g++, c++ or clang++
    monkeypatch.delenv("CXX", raising=False)
    with pytest.raises(ValueError, match="needs a C\\+\\+ compiler"):
        training_forward(tiny_ntm(), compile_step=True)
    assert training_forward(tiny_ntm(), compile_step=False) is not None  # eager training is unaffected


def test_lstm_baseline_trains(tmp_path: Path) -> None:
    cfg = small_config(tmp_path / "lstm", model="lstm_baseline", sequences=32, eval_every=32,
                       baseline={"hidden_size": 16, "layers": 1})
    train(cfg, progress=False)
    model, meta = load_model(cfg.out)
    assert isinstance(model, LSTMBaseline) and meta["baseline"] == {"hidden_size": 16, "layers": 1}


def test_training_cli_parses_options() -> None:
    cfg = parse(["repeat_copy", "--sequences", "100", "--optimizer", "rmsprop", "--lr", "1e-4",
                 "--ntm", '{"controller": "feedforward", "shift_range": 5}'])
    assert (cfg.task, cfg.out, cfg.sequences, cfg.optimizer, cfg.lr) == (
        "repeat_copy", "runs/repeat_copy", 100, "rmsprop", 1e-4)
    assert cfg.ntm == {"controller": "feedforward", "shift_range": 5}
    assert parse(["copy", "--model", "lstm_baseline"]).out == "runs/copy_lstm_baseline"
    assert parse(["copy", "--compile"]).compile and not parse(["copy"]).compile


# ---------------------------------------------------------------- the evaluation CLI


def shipped_like(folder: Path, kind: str) -> Path:
    """An untrained model saved the way the trainer saves it."""
    task = get_task("copy")
    meta = {"task": "copy", "input_size": task.input_size, "output_size": task.output_size, "sequences_trained": 0}
    if kind == "ntm":
        model: torch.nn.Module = tiny_ntm()
    else:
        torch.manual_seed(0)
        meta["baseline"] = {"hidden_size": 16, "layers": 1}
        model = LSTMBaseline(9, 8, hidden_size=16, layers=1)
    save_model(model, folder, meta)
    return folder


@pytest.mark.parametrize("kind", ["ntm", "lstm_baseline"])
def test_evaluate_writes_the_report(tmp_path: Path, kind: str, capsys: pytest.CaptureFixture[str]) -> None:
    folder = shipped_like(tmp_path / kind, kind)
    report = evaluate_main([str(folder), "--sequences", "12", "--batch-size", "6", "--seed", "3"])
    names = [p["name"] for p in report["points"]]
    assert names == [n for n, _ in get_task("copy").eval_points]
    assert all(p["sequences"] == 12 for p in report["points"])
    assert report["points"][0]["training_range"] and not any(p["training_range"] for p in report["points"][1:])
    assert report["points"][-1]["max_steps"] == 241  # L = 120
    untrained = report["points"][1]["bit_errors"]  # L = 20: an untrained model gets about half of 160 bits wrong
    assert 40 < untrained < 120
    targets = {p["name"]: (p["target"], p["met"]) for p in report["points"]}
    if kind == "ntm":
        assert targets["L in [1,20]"] == ("< 0.1", False) and targets["L=40"] == ("<= 1", False)
    else:  # the baseline is reported, not held to the NTM's targets
        assert all(t == (None, None) for t in targets.values())
    saved = json.loads((folder / "eval.json").read_text())
    assert saved["points"] == report["points"] and saved["command"].startswith("python -m ntm_serve.training.evaluate")
    table = (folder / "eval.md").read_text()
    assert "| L=120 |" in table and table in capsys.readouterr().out
    assert (folder / "example.png").stat().st_size > 10_000


def test_evaluate_is_reproducible_and_points_are_independent(tmp_path: Path) -> None:
    folder = shipped_like(tmp_path / "ntm", "ntm")
    full = evaluate_folder(folder, sequences=8, seed=5, write=False, figure=False)
    one = evaluate_folder(folder, sequences=8, seed=5, points=["L=40"], write=False, figure=False)
    assert one["points"][0]["bit_errors"] == next(p for p in full["points"] if p["name"] == "L=40")["bit_errors"]
    other_seed = evaluate_folder(folder, sequences=8, seed=6, points=["L=40"], write=False, figure=False)
    assert other_seed["points"][0]["bit_errors"] != one["points"][0]["bit_errors"]
    with pytest.raises(ValueError, match="unknown eval point"):
        evaluate_folder(folder, sequences=8, points=["L=41"], write=False, figure=False)


def test_evaluate_cli_rejects_a_folder_without_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        evaluate_main([str(tmp_path)])


def test_targets_name_real_eval_points() -> None:
    for task, targets in TARGETS.items():
        names = {n for n, _ in get_task(task).eval_points}
        if task == "associative_recall":
            names |= {n for n, _ in get_task(task, wrap=True).eval_points}
        assert all(point in names for point, _, _ in targets)
        assert targets[0][0] == get_task(task).eval_points[0][0]  # the training-range target comes first


def test_sequences_to_reach_reads_the_training_log(tmp_path: Path) -> None:
    log = tmp_path / "train_log.jsonl"
    assert sequences_to_reach(log) is None
    rows = [(1000, 5.0), (2000, 0.1), (3000, 0.05), (4000, 0.0)]
    log.write_text("".join(json.dumps({"sequences": n, "eval_bit_errors": e}) + "\n" for n, e in rows))
    assert sequences_to_reach(log) == 3000  # strictly below 0.1
    assert sequences_to_reach(log, threshold=0.01) == 4000
    assert sequences_to_reach(log, threshold=0.0) is None


def test_transplant_copies_shared_channels_and_keeps_new_ones_fresh() -> None:
    """--init-from: a copy NTM seeds a repeat-copy NTM; x columns, read/h columns and output rows line up."""
    from ntm_serve.training.config import NTMConfig
    from ntm_serve.training.model import NTM
    from ntm_serve.training.transplant import transplant

    torch.manual_seed(0)
    source = NTM(NTMConfig(9, 8))
    target = NTM(NTMConfig(10, 9))
    fresh = {k: v.clone() for k, v in target.state_dict().items()}
    transplant(source, target)
    src, dst = source.state_dict(), target.state_dict()
    gates_src, gates_dst = src["controller.gates.weight"], dst["controller.gates.weight"]  # (4H, I + R*M + H)
    assert torch.equal(gates_dst[:, :9], gates_src[:, :9])  # the 9 shared input channels
    assert torch.equal(gates_dst[:, 9], fresh["controller.gates.weight"][:, 9])  # the new repeat-count channel
    assert torch.equal(gates_dst[:, 10:], gates_src[:, 9:])  # read vectors and h, shifted by one column
    assert torch.equal(dst["output.weight"][:8], src["output.weight"][:8])
    assert torch.equal(dst["output.weight"][8], fresh["output.weight"][8])  # the end-marker channel
    assert torch.equal(dst["memory0"], src["memory0"]) and torch.equal(dst["r0"], src["r0"])
    with pytest.raises(ValueError, match="cannot narrow the controller: 100 -> 50 units"):
        transplant(NTM(NTMConfig(9, 8, controller_size=100)), NTM(NTMConfig(9, 8, controller_size=50)))


@pytest.mark.parametrize("controller", ["lstm", "feedforward"])
def test_transplant_widens_the_controller_and_starts_as_its_source(controller: str) -> None:
    """--init-from into a wider controller: each gate's units copied in place, the new units fresh inside but
    read by nothing (zero columns of h everywhere), so the wider model computes its source's outputs; and
    the new units do learn: one gradient step moves the weights that read them."""
    from ntm_serve.training.transplant import transplant

    torch.manual_seed(0)
    base = NTMConfig(69, 5, controller=controller, controller_size=12, memory_rows=8, memory_width=4, read_heads=2,
                     write_heads=2, heads="lru", heads_see_input=True)
    source = NTM(base).eval()
    target = NTM(NTMConfig(**{**base.to_dict(), "controller_size": 20})).eval()
    fresh = {k: v.clone() for k, v in target.state_dict().items()}
    transplant(source, target)
    src, dst = source.state_dict(), target.state_dict()
    name = "controller.gates" if controller == "lstm" else "controller.layer"
    gates = 4 if controller == "lstm" else 1
    w_src, w_dst = (s[f"{name}.weight"].view(gates, -1, s[f"{name}.weight"].shape[1]) for s in (src, dst))
    inputs = 69 + 2 * 4  # (gates, H, x + reads [+ h])
    assert torch.equal(w_dst[:, :12, :inputs], w_src[:, :, :inputs])  # each gate's old units, in place
    assert torch.equal(w_dst[:, 12:, :inputs], fresh[f"{name}.weight"].view_as(w_dst)[:, 12:, :inputs])
    if controller == "lstm":
        assert torch.equal(w_dst[:, :12, inputs:inputs + 12], w_src[:, :, inputs:])  # old h read by old units
        assert not w_dst[:, :, inputs + 12:].any()  # nobody reads the new units' h yet
        assert torch.equal(dst[f"{name}.bias"].view(4, -1)[1, 12:], torch.ones(8))  # their forget bias 1
    for proj in ("read_proj", "write_proj"):
        assert not dst[f"{proj}.linear.weight"][:, 12:].any()
    assert not dst["output.weight"][:, 12:20].any()
    assert torch.equal(dst["h0"][:12], src["h0"]) and torch.equal(dst["c0"][:12], src["c0"])
    x = torch.rand(7, 3, 69)  # (T, B, X)
    with torch.no_grad():
        torch.testing.assert_close(target(x)[0], source(x)[0], rtol=0, atol=1e-6)
    target.train()
    target(x)[0].square().sum().backward()
    assert target.output.weight.grad[:, 12:20].abs().sum() > 0  # the gradient reaches the new units at once


def test_input_layer_starts_unread_in_a_warm_start_and_feeds_the_controller_and_the_heads() -> None:
    """input_layer: a ReLU layer over the step's input whose features the controller and the heads' skip see beside
    the raw input. Warm-started from a model without one, the features are read by nothing (the model computes its
    source's outputs); the gradient reaches the columns that read them at once; a negative size is refused."""
    from ntm_serve.training.transplant import transplant

    torch.manual_seed(0)
    base = NTMConfig(69, 5, controller_size=12, memory_rows=8, memory_width=4, read_heads=2, write_heads=2,
                     heads="lru", heads_see_input=True, write_follows=True)
    source = NTM(base).eval()
    target = NTM(NTMConfig(**{**base.to_dict(), "input_layer": 16})).eval()
    assert target.controller.gates.weight.shape[1] == 69 + 16 + 2 * 4 + 12  # (4H, I + E + R*M + H)
    assert target.read_proj.skip.weight.shape[1] == 69 + 16
    transplant(source, target)
    dst = target.state_dict()
    assert not dst["controller.gates.weight"][:, 69:85].any() and not dst["read_proj.skip.weight"][:, 69:].any()
    assert torch.equal(dst["controller.gates.weight"][:, 85:], source.state_dict()["controller.gates.weight"][:, 69:])
    x = torch.rand(7, 3, 69)  # (T, B, X)
    with torch.no_grad():
        torch.testing.assert_close(target(x)[0], source(x)[0], rtol=0, atol=1e-6)
    target.train()
    target(x)[0].square().sum().backward()
    assert target.controller.gates.weight.grad[:, 69:85].abs().sum() > 0
    assert "input_layer" not in base.to_dict() and target.config.to_dict()["input_layer"] == 16
    with pytest.raises(ValueError, match="input_layer must be >= 0"):
        NTMConfig(69, 5, input_layer=-1)


def test_transplant_seeds_an_lstm_baseline_with_more_task_channels() -> None:
    """--init-from between LSTM baselines (5-way -> 15-way glyphs): pixels and the shared labels copied, the new
    label inputs and outputs fresh; an NTM and an LSTM, or LSTMs of other sizes, are refused."""
    from ntm_serve.training.config import NTMConfig
    from ntm_serve.training.model import NTM, LSTMBaseline
    from ntm_serve.training.transplant import transplant

    torch.manual_seed(0)
    source, target = LSTMBaseline(405, 5, hidden_size=32, layers=2), LSTMBaseline(415, 15, hidden_size=32, layers=2)
    fresh = {k: v.clone() for k, v in target.state_dict().items()}
    transplant(source, target)
    src, dst = source.state_dict(), target.state_dict()
    assert torch.equal(dst["lstm.weight_ih_l0"][:, :405], src["lstm.weight_ih_l0"])  # (4H, I): pixels, labels 0-4
    assert torch.equal(dst["lstm.weight_ih_l0"][:, 405:], fresh["lstm.weight_ih_l0"][:, 405:])  # labels 5-14
    assert torch.equal(dst["output.weight"][:5], src["output.weight"])
    assert torch.equal(dst["output.bias"][5:], fresh["output.bias"][5:])
    for name in ("lstm.weight_hh_l0", "lstm.weight_ih_l1", "lstm.bias_hh_l1"):
        assert torch.equal(dst[name], src[name])
    with pytest.raises(ValueError, match="two NTMs or two LSTM baselines"):
        transplant(source, NTM(NTMConfig(415, 15)))
    for other in (LSTMBaseline(415, 15, hidden_size=32, layers=3), LSTMBaseline(415, 15, hidden_size=16, layers=2)):
        with pytest.raises(ValueError, match="cannot change the LSTM's hidden size or layers"):
            transplant(source, other)


def test_wrap_variant_queries_every_item_at_every_point() -> None:
    """The seed's recall variant: at every point some queries are the last item, whose answer is item 1."""
    for name, sample in get_task("associative_recall", wrap=True).eval_points:
        batch = sample(torch.Generator().manual_seed(0), 256)
        items = (batch.inputs.shape[0] - 8) // 4
        first_item = batch.inputs[1:4]  # (3, B, 8): item 1's three rows
        wrapped = (batch.targets == first_item[:, :, :6]).all(dim=(0, 2))  # (B,)
        assert wrapped.float().mean() > 0.5 / items, name  # about 1/K of the queries wrap


def test_copy_max_length_trains_longer_and_still_reports_the_usual_points() -> None:
    task = get_task("copy", max_length=50)
    names = [n for n, _ in task.eval_points]
    assert names[:2] == ["L in [1,50]", "L in [1,20]"] and "L=120" in names
    lengths = {task.sample(torch.Generator().manual_seed(s), 1).targets.shape[0] for s in range(200)}
    assert max(lengths) > 20 and max(lengths) <= 50
    with pytest.raises(ValueError, match="no option 'max_length' \\(max_length is an option of copy\\)"):
        get_task("associative_recall", max_length=50)


def test_select_on_picks_the_checkpoint_by_that_point(tmp_path: Path) -> None:
    cfg = dataclasses.replace(small_config(tmp_path / "sel"), select_on="L=40")
    train(cfg, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "sel" / "train_log.jsonl").read_text().splitlines()]
    best = min(rows, key=lambda r: (r["select_bit_errors"], -r["sequences"]))
    meta = json.loads((tmp_path / "sel" / "config.json").read_text())
    assert meta["sequences_trained"] == best["sequences"] and meta["select_bit_errors"] == best["select_bit_errors"]
    with pytest.raises(ValueError, match="not an eval point"):
        train(dataclasses.replace(cfg, out=str(tmp_path / "bad"), select_on="L=999"), progress=False)


def test_device_option_resolves_and_refuses_cuda_without_a_gpu() -> None:
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="device must be one of"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            resolve_device("cuda")


def test_progress_off_a_terminal_writes_periodic_plain_lines(caplog: pytest.LogCaptureFixture) -> None:
    bar = Progress(total=100, initial=0, interval_s=0.0, terminal=False)
    with caplog.at_level(logging.INFO, logger="training"):
        for _ in range(3):
            bar.update(10, loss="0.5")
    bar.close()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3 and "\r" not in "".join(lines) and lines[-1].startswith("30/100 sequences")


def test_priority_sort_min_items_mixes_fewer_items_and_is_judged_on_20_to_16() -> None:
    task = get_task("priority_sort", min_items=2)
    assert [n for n, _ in task.eval_points] == ["20 -> 16"]  # evaluated and selected on the encoding
    shapes = set()
    for s in range(300):
        batch = task.sample(torch.Generator().manual_seed(s), 2)
        items, keep = batch.inputs.shape[0] - 1 - batch.targets.shape[0], batch.targets.shape[0]
        assert keep == -(-4 * items // 5) and batch.inputs[items, :, 9].eq(1).all()  # ceil(4n/5) kept; delimiter
        shapes.add(items)
    assert min(shapes) == 2 and max(shapes) == 20
    assert get_task("priority_sort").sample(torch.Generator().manual_seed(0), 1).inputs.shape[0] == 37
    with pytest.raises(ValueError, match="no option 'min_items' \\(min_items is an option of priority_sort\\)"):
        get_task("copy", min_items=2)
    with pytest.raises(ValueError, match="min_items must be"):
        get_task("priority_sort", min_items=21)
    # The trainer picks such a run's checkpoint on 20 -> 16, not on the easier mixture it trains on.
    cfg = train_module.TrainConfig(task="priority_sort", out="unused", task_options={"min_items": 2})
    assert train_module._selection_sampler(cfg, task) is task.eval_points[0][1]
    assert train_module._selection_sampler(cfg, get_task("priority_sort")) is None


def test_priority_sort_narrow_batches_squeeze_the_priorities_and_still_sort_them() -> None:
    task = get_task("priority_sort", min_items=20, narrow=1.0)
    widths = []
    for s in range(100):
        batch = task.sample(torch.Generator().manual_seed(s), 8)
        priority, seq = batch.inputs[:20, :, 8], batch.inputs[:20, :, :8]  # (20, B), (20, B, 8)
        assert bool((priority >= -1).all() and (priority <= 1).all())
        order = torch.argsort(priority, dim=0, descending=True)[:16]  # (16, B)
        assert torch.equal(batch.targets, seq[order, torch.arange(8)])
        widths.append(float(priority.max() - priority.min()))
    assert min(widths) < 0.1 and max(widths) > 1.0  # log-uniform half-ranges from 0.02 to 1
    assert [n for n, _ in task.eval_points] == ["20 -> 16"]
    with pytest.raises(ValueError, match="narrow must be"):
        get_task("priority_sort", narrow=1.5)
