"""Training configs as TOML files: every built-in task has one, flags override keys, wrong keys are named; and a
refused command changes nothing (the output folder, its command.txt, a shipped model)."""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
from pathlib import Path

import pytest

from ntm_serve.training.__main__ import main, parse
from ntm_serve.training.checkpoint import resume_path
from ntm_serve.training.config_file import ConfigError, read, to_toml, train_config
from ntm_serve.training.tasks import BUILTIN
from ntm_serve.training.train import TrainConfig, canonical, train

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"
TINY = {"controller_size": 16, "memory_rows": 8, "memory_width": 4}
# configs/<task>.toml of these is exactly `python -m ntm_serve.training <task>` with every default spelled out
PLAIN = ("copy", "repeat_copy", "associative_recall", "priority_sort", "one_shot", "one_shot_synthetic")


def same_run(a: TrainConfig, b: TrainConfig) -> bool:
    return canonical(dataclasses.asdict(a)) == canonical(dataclasses.asdict(b))


@pytest.mark.parametrize("task", sorted(BUILTIN))
def test_every_built_in_task_has_a_config(task: str) -> None:
    path = CONFIGS / f"{task}.toml"
    assert path.is_file(), f"no configs/{task}.toml"
    cfg = parse(["--config", str(path)])
    assert cfg.task == task and not cfg.out.startswith("models/")
    assert cfg.ntm or cfg.model != "ntm", "the config spells out the NTM's shape"


@pytest.mark.parametrize("task", PLAIN)
def test_the_plain_tasks_configs_are_their_plain_commands(task: str) -> None:
    from_config = parse(["--config", str(CONFIGS / f"{task}.toml")])
    assert same_run(from_config, parse([task])) and from_config.out == f"runs/{task}"
    assert not parse([task]).out.startswith("models/")  # the default never overwrites a shipped model


def test_flags_and_set_override_config_keys() -> None:
    cfg = parse(["--config", str(CONFIGS / "copy.toml"), "--lr", "3e-4", "--set", "task.max_length=40",
                 "--set", "ntm.read_heads=2", "--set", "budget.select_on=L=80", "--sequences", "500"])
    assert (cfg.lr, cfg.sequences, cfg.select_on) == (3e-4, 500, "L=80")
    assert cfg.task_options == {"max_length": 40} and cfg.ntm["read_heads"] == 2 and cfg.ntm["memory_rows"] == 128
    # The old task flags are the task's options: the same run either way.
    assert same_run(parse(["copy", "--max-length", "40"]), parse(["copy", "--set", "task.max_length=40"]))
    assert same_run(parse(["associative_recall", "--wrap"]),
                    parse(["--config", str(CONFIGS / "associative_recall.toml"), "--set", "task.wrap=true"]))
    # A task named on the command line replaces the config's.
    assert parse(["--config", str(CONFIGS / "copy.toml"), "--data", "x.npz", "--set", "task.max_length=0"]).data


def test_a_config_round_trips_through_toml(tmp_path: Path) -> None:
    cfg = TrainConfig(task="priority_sort", out="runs/x", task_options={"min_items": 2, "narrow": 0.25},
                      ntm={"controller": "feedforward", "memory_init_value": 1e-6}, lr=3e-5, stop_below=0.02,
                      select_on="20 -> 16", compile=True, seed=3)
    path = tmp_path / "c.toml"
    path.write_text(to_toml(cfg))
    assert train_config(read(path)) == cfg
    data = TrainConfig(data="d.npz", out="runs/d", task_options={"validation": "v.npz"})
    path.write_text(to_toml(data))
    assert train_config(read(path)) == data


@pytest.mark.parametrize(("text", "words"), [
    ('[optimiser]\nlr = 1e-3\n[task]\nname = "copy"', "unknown top-level key(s) or section(s) ['optimiser']"),
    ('[budget]\nsequence = 5\n[task]\nname = "copy"', "[budget] has unknown key(s) ['sequence']"),
    ('[optimizer]\nlr = "fast"\n[task]\nname = "copy"', "optimizer.lr must be float, got 'fast'"),
    ('[task]\nname = "copy"\nwrap = true', "'copy' has no option 'wrap' (wrap is an option of associative_recall)"),
    ('[task]\nname = "copy"\n[ntm]\nrows = 8', "unexpected keyword argument 'rows'"),
    ('[task]\nname = "copy"\ndata = "x.npz"', "name exactly one of"),
    ('seed = 0', "no task"),
    ('[task\nname = "copy"', "not valid TOML"),
])
def test_a_wrong_config_is_named_and_nothing_is_written(tmp_path: Path, text: str, words: str,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    out = tmp_path / "out"
    assert main(["--config", str(path), "--out", str(out)]) == 2
    assert words in capsys.readouterr().err
    assert not out.exists()


def _tree(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_training_into_a_model_folder_without_a_run_is_refused_and_changes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The README's first command once failed after overwriting the shipped command.txt; a shipped model folder
    (a checkpoint, no resume state) is now refused before anything is written."""
    shipped = tmp_path / "copy"
    shipped.mkdir()
    for name in ("checkpoint.pt", "config.json", "command.txt", "eval.json"):
        shutil.copy2(ROOT / "models" / "copy" / name, shipped / name)
    before = _tree(shipped)
    assert main(["copy", "--out", str(shipped), "--sequences", "16", "--device", "cpu"]) == 2
    assert "holds a checkpoint.pt but no resume state" in capsys.readouterr().err
    assert _tree(shipped) == before


def test_resuming_with_another_config_is_refused_and_changes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    argv = ["copy", "--out", str(out), "--sequences", "32", "--eval-every", "16", "--eval-sequences", "4",
            "--ntm", '{"controller_size": 16, "memory_rows": 8, "memory_width": 4}', "--device", "cpu", "--no-report"]
    assert main(argv) == 0
    assert resume_path(out).is_file() and not (out / "resume.pt").exists()
    before = _tree(out)
    assert main([*argv, "--lr", "0.5"]) == 2
    assert "was written by a different training config" in capsys.readouterr().err
    assert _tree(out) == before
    assert main([*argv[:4], "64", *argv[5:]]) == 0  # the same run with a larger budget resumes
    assert "--sequences 64 " in (out / "command.txt").read_text()


def test_a_legacy_resume_file_still_resumes(tmp_path: Path) -> None:
    """Runs started before the scratch folder kept resume.pt beside the checkpoint: read from there."""
    cfg = TrainConfig(task="copy", out=str(tmp_path / "old"), sequences=32, eval_every=16, eval_sequences=4,
                      ntm=dict(TINY), device="cpu")
    train(cfg, progress=False)
    resume_path(cfg.out).rename(Path(cfg.out) / "resume.pt")
    assert resume_path(cfg.out) == Path(cfg.out) / "resume.pt"
    result = train(dataclasses.replace(cfg, sequences=48), progress=False)
    assert result["sequences"] == 48 and resume_path(cfg.out, for_writing=True).is_file()


def test_an_unknown_task_source_combination_is_refused() -> None:
    with pytest.raises(ConfigError, match="name one task, not name and data"):
        parse(["copy", "--data", "x.npz"])
