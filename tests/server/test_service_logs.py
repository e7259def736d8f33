"""What a server start says on stderr: one line naming the execution provider and why (no onnxruntime error on a
machine without a GPU), and a text log (`--log-format text`) that carries every field the JSON log carries."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from helpers import ROOT

from ntm_serve.client.sdk import NTMClient
from ntm_serve.server.logs import JsonFormatter, TextFormatter
from ntm_serve.server.ports import LOCAL, wait_port_file

PAIR = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\[[^\]]*\]|\{.*?\}(?= \w+=|$)|\S+)')


def _parse_logfmt(text: str) -> dict[str, Any]:
    """key=value pairs of a text log line, values read back as JSON where they are JSON."""
    out: dict[str, Any] = {}
    for key, raw in PAIR.findall(text):
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


def _record(**extra: Any) -> logging.LogRecord:
    record = logging.LogRecord("ntm_serve.server.lifecycle", logging.ERROR, __file__, 1, "model version refused",
                               (), None)
    record.__dict__.update(extra)
    return record


def test_a_text_line_carries_every_field_of_the_json_line() -> None:
    extra = {"model": "copy", "version": 2, "reason": "missing", "detail": 'models/copy/2: "step.onnx" missing',
             "folder": "models/my copy/2", "ok": False, "store": None, "ratio": 0.5, "models": ["copy", "sort"],
             "empty": ""}
    record = _record(**extra)
    as_json = json.loads(JsonFormatter().format(record))
    text = TextFormatter().format(record)
    head, _, pairs = text.partition(": model version refused ")
    assert head.endswith("ERROR ntm_serve.server.lifecycle")
    fields = {k: v for k, v in as_json.items() if k not in ("ts", "level", "logger", "msg")}
    assert fields == extra and _parse_logfmt(pairs) == fields
    assert "model=copy version=2 reason=missing" in text  # plain words stay bare, for grep


def test_a_traceback_stays_below_the_fields() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = _record(model="copy", exc_info=sys.exc_info())
    first, *rest = TextFormatter().format(record).splitlines()
    assert first.endswith("model version refused model=copy")
    assert rest[0].startswith("Traceback") and rest[-1] == "ValueError: boom"


def _start(models: Path, tmp_path: Path, fmt: str) -> tuple[str, str]:
    """Start a server (provider auto: what a newcomer runs), read its provider from ListModels, stop it; its
    provider and its whole stderr."""
    port_file, log_path = tmp_path / f"{fmt}.ports", tmp_path / f"{fmt}.log"
    cmd = [sys.executable, "-m", "ntm_serve.server", "--models", str(models), "--host", LOCAL, "--port", "0",
           "--metrics-port", "-1", "--port-file", str(port_file), "--log-format", fmt]
    with log_path.open("w") as log:
        process = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                   env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        port = wait_port_file(port_file, process, log_path)["port"]
        with NTMClient(f"{LOCAL}:{port}", timeout=60) as client:
            provider = client.list_models()[0].provider
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0, log_path.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return provider, log_path.read_text()


@pytest.fixture(scope="module")
def models_with_a_broken_one(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`copy`, and `broken`: a step graph alone, refused at start with reason 'missing'."""
    out = tmp_path_factory.mktemp("with_broken")
    (out / "copy").symlink_to(models_dir / "copy", target_is_directory=True)
    (out / "broken").mkdir()
    (out / "broken" / "step.onnx").symlink_to(models_dir / "copy" / "step.onnx")
    return out


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_a_start_names_its_provider_once_and_no_onnxruntime_error(fmt: str, models_with_a_broken_one: Path,
                                                                   tmp_path: Path) -> None:
    served, stderr = _start(models_with_a_broken_one, tmp_path, fmt)
    lines = stderr.splitlines()
    assert not [line for line in lines if "libcublas" in line or "[E:" in line or "[W:onnxruntime" in line], stderr
    named = [line for line in lines if "execution provider" in line]
    assert len(named) == 1, stderr
    expected = {"CPUExecutionProvider": "cpu", "CUDAExecutionProvider": "cuda"}[served]
    if fmt == "json":
        entry = json.loads(named[0])
        provider, reason = entry["provider"], entry["reason"]
        refused = [json.loads(line) for line in lines if '"model version refused"' in line]
    else:
        entry = _parse_logfmt(named[0].partition(": execution provider ")[2])
        provider, reason = entry["provider"], entry["reason"]
        refused = [_parse_logfmt(line.partition(": model version refused ")[2])
                   for line in lines if ": model version refused " in line]
    assert provider == expected and reason.startswith("--provider auto: ")
    if expected == "cpu":  # the reason says why CUDA is not used (no driver, no GPU, a library missing ...)
        assert "CUDA" in reason or "NVIDIA" in reason or "cuda" in reason, reason
    assert len(refused) == 1 and refused[0]["model"] == "broken" and refused[0]["reason"] == "missing", stderr
    assert "sequence.onnx" in refused[0]["detail"]
