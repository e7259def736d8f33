"""Training on memory sizes drawn per batch (issue 24): `memory_rows` in the config, the command line and TOML, one N
per batch from the run's own generator, checked before anything is written; the model runs at any N in its
range (eager and compiled forward)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from ntm_serve.training.__main__ import parse
from ntm_serve.training.compiled import eager_forward
from ntm_serve.training.config import NTMConfig
from ntm_serve.training.config_file import read, to_toml, train_config
from ntm_serve.training.model import NTM
from ntm_serve.training.tasks import copy_batch
from ntm_serve.training.train import TrainConfig, train, training_rows

TINY = {"controller_size": 24, "memory_rows": 24, "memory_width": 6}


def test_one_size_per_batch_from_the_generator_and_none_without_choices() -> None:
    gen = torch.Generator().manual_seed(0)
    drawn = [training_rows([16, 24, 40], gen) for _ in range(300)]
    assert set(drawn) == {16, 24, 40} and all(60 < drawn.count(n) < 140 for n in (16, 24, 40))
    again = torch.Generator().manual_seed(0)
    assert [training_rows([16, 24, 40], again) for _ in range(300)] == drawn  # deterministic: resumable
    untouched = torch.Generator().manual_seed(0)
    state = untouched.get_state()
    assert training_rows([], untouched) is None and torch.equal(untouched.get_state(), state)  # other runs unchanged


def test_the_flag_and_the_config_key_give_the_same_run(tmp_path: Path) -> None:
    from_flag = parse(["copy", "--memory-rows", "16,24,40", "--out", str(tmp_path / "a")])
    assert from_flag.memory_rows == [16, 24, 40]
    path = tmp_path / "run.toml"
    path.write_text(to_toml(from_flag))
    assert read(path)["memory_rows"] == [16, 24, 40]
    assert dataclasses.asdict(train_config(read(path))) == dataclasses.asdict(from_flag)
    with pytest.raises(SystemExit):
        parse(["copy", "--memory-rows", "16,x"])


@pytest.mark.parametrize(("rows", "words"), [([2, 24], r"\[2\] outside the model's range \[3, 8192\]"),
                                             ([24, 9000], "outside the model's range"),
                                             (["24"], "outside the model's range")])
def test_sizes_outside_the_range_are_refused_before_anything_is_written(tmp_path: Path, rows: list, words: str
                                                                       ) -> None:
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=words):
        train(TrainConfig(task="copy", out=str(out), ntm=TINY, memory_rows=rows, sequences=8), progress=False)
    assert not out.exists()


def test_the_lstm_baseline_has_no_memory_rows(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="NTM only"):
        train(TrainConfig(task="copy", out=str(tmp_path / "b"), model="lstm_baseline", memory_rows=[24],
                          sequences=8), progress=False)


def test_a_run_over_several_sizes_trains_and_records_them(tmp_path: Path) -> None:
    out = tmp_path / "run"
    cfg = TrainConfig(task="copy", out=str(out), ntm=TINY, memory_rows=[16, 40], sequences=64, batch_size=8,
                      eval_every=32, eval_sequences=8)
    train(cfg, progress=False)
    recorded = json.loads((out / "config.json").read_text())
    assert recorded["train_config"]["memory_rows"] == [16, 40]
    assert recorded["config"]["memory_rows"] == 24  # the model's own N stays its default


def test_eager_forward_runs_the_batch_at_the_size_asked() -> None:
    torch.manual_seed(0)
    model = NTM(NTMConfig(9, 8, **TINY))
    batch = copy_batch(torch.Generator().manual_seed(1), 2, 5)
    forward = eager_forward(model)
    with torch.no_grad():
        at_40 = forward(batch.inputs, 40)
        assert torch.equal(at_40, model(batch.inputs, rows=40)[0])
        assert torch.equal(forward(batch.inputs), model(batch.inputs)[0])
        assert not torch.equal(at_40, forward(batch.inputs))  # N is part of the computation (the shift wraps at N)
