"""The CUDA-graph path's CPU side, run in CI: which bucket a batch runs in (pure functions), the settings and the
refusal on CPU, and the engine serving at fixed batch buckets (the same buffers as under CUDA graphs, without
the capture) with the numbers of the plain path. tests/test_service_gpu.py runs the graphs themselves."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from helpers import bits, run_schedule, schedule, service_config

from ntm_serve.client.sdk import NTMClient
from ntm_serve.runtime.buckets import (
    ROW_MULTIPLE,
    bucket_rows,
    check_buckets,
    default_buckets,
    keeps,
    padded,
    parse_buckets,
)
from ntm_serve.runtime.cuda_graphs import BucketSteps, CudaGraphError, graph_ids
from ntm_serve.runtime.engine import Engine, ModelLoadError
from ntm_serve.runtime.ort_session import open_session
from ntm_serve.server.config import load_config
from ntm_serve.server.server import ServerThread

BUCKETS = (4, 8, 16, 32)


def test_bucket_is_the_smallest_that_holds_the_padded_batch() -> None:
    assert [bucket_rows(padded(n), BUCKETS) for n in (1, 4, 5, 8, 9, 16, 17, 32)] == [4, 4, 8, 8, 16, 16, 32, 32]
    assert bucket_rows(12, (4, 12, 64)) == 12 and bucket_rows(13, (4, 12, 64)) == 64
    assert [bucket_rows(padded(n), ()) for n in (1, 4, 5, 63)] == [4, 4, 8, 64]  # no buckets: padding only
    with pytest.raises(ValueError, match="fits no bucket"):
        bucket_rows(36, BUCKETS)


def test_default_buckets_double_up_to_max_batch() -> None:
    assert default_buckets(64) == (4, 8, 16, 32, 64)
    assert default_buckets(65) == (4, 8, 16, 32, 64, 128)
    assert default_buckets(1) == (ROW_MULTIPLE,)
    for max_batch in range(1, 300):
        buckets = default_buckets(max_batch)
        assert check_buckets(buckets, max_batch) == buckets
        assert buckets[-1] < 2 * max_batch + ROW_MULTIPLE  # no bucket past the one that holds max_batch


def test_bad_buckets_are_refused_with_the_reason() -> None:
    assert check_buckets((64, 8, 8, 4), 64) == (4, 8, 64)
    assert parse_buckets(" 4, 8,16 ,") == (4, 8, 16) and parse_buckets("") == ()
    for buckets, message in (((4, 6, 64), "multiples of 4"), ((0, 64), "multiples of 4"), ((4, 32), "max_batch"),
                             ((), "empty")):
        with pytest.raises(ValueError, match=message):
            check_buckets(buckets, 64)
    with pytest.raises(ValueError, match="integers"):
        parse_buckets("4,eight")


def test_keeping_a_resident_batch_without_buckets_is_the_old_rule() -> None:
    """The default path must decide exactly as before: rebuild when the rows do not fit or fill under 3/4."""
    for size in range(4, 260, 4):
        for rows in range(4, 260, 4):
            old = not (rows > size or 4 * rows < 3 * size)
            assert keeps(size, rows, ()) == old, (size, rows)


def test_buckets_switch_only_past_the_hysteresis() -> None:
    buckets = default_buckets(256)
    assert not keeps(32, 36, buckets)  # outgrown: up to 64
    assert keeps(64, 36, buckets) and keeps(64, 28, buckets)  # still over 3/4 of bucket 32: stays at 64
    assert not keeps(64, 24, buckets)  # fills 3/4 of bucket 32: down to 32
    assert keeps(8, 4, buckets)  # 4 rows are not under 3/4 of bucket 4: stays at 8
    for size in buckets:  # whatever the decision, the next size is a bucket that holds the rows
        for rows in range(4, size + 1, 4):
            assert keeps(size, rows, buckets) or bucket_rows(rows, buckets) != size


def test_graph_ids_are_distinct_and_never_onnxruntimes_reserved_ones() -> None:
    ids = [i for k in range(20) for i in graph_ids(k)]
    assert len(set(ids)) == len(ids) and min(ids) >= 1  # 0: onnxruntime's default graph, -1: no graph


def test_settings_cuda_graph_refused_on_cpu_and_buckets_checked() -> None:
    config = load_config(["--cuda-graph", "true", "--provider", "cuda"], env={})
    assert config.cuda_graph and config.buckets() == (4, 8, 16, 32, 64)  # the default, from --max-batch 64
    config = load_config(["--max-batch", "100"], env={"NTM_CUDA_GRAPH": "1", "NTM_BATCH_BUCKETS": "128,4,32"})
    assert config.cuda_graph and config.buckets() == (4, 32, 128)
    with pytest.raises(ValueError, match="cuda_graph needs the CUDA provider"):
        load_config(["--cuda-graph", "true", "--provider", "cpu"], env={})
    with pytest.raises(ValueError, match="must hold max_batch"):
        load_config(["--batch-buckets", "4,32"], env={})
    assert not load_config([], env={}).cuda_graph  # off unless asked for


def test_auto_without_cuda_serves_without_graphs_and_says_so(copy_dir: Path, caplog: pytest.LogCaptureFixture,
                                                              ) -> None:
    """Where auto resolves to CPU (no GPU here), --cuda-graph is logged and off; the server serves."""
    config = service_config(copy_dir, provider="auto", cuda_graph=True)
    with caplog.at_level(logging.WARNING, logger="ntm_serve.server.lifecycle"), ServerThread(config) as server:
        if server.server.lifecycle.provider == "cuda":
            pytest.skip("CUDA loads here: tests/test_service_gpu.py covers the graphs")
        with NTMClient(server.target) as client:
            session = client.create_session("copy").session_id
            assert client.step(session, bits(np.random.default_rng(0), 3)).outputs.shape == (3, 8)
        assert server.server.models["copy"].batcher.engine.fixed is None
    assert any("CUDA graphs are off" in r.getMessage() for r in caplog.records)


def test_engine_refuses_cuda_graphs_on_cpu(models_dir: Path) -> None:
    with pytest.raises(ModelLoadError, match="CUDA provider"):
        Engine(models_dir / "copy", "cpu", buckets=BUCKETS, cuda_graph=True)


def test_a_bucket_whose_step_fails_is_reported_with_its_bucket(models_dir: Path) -> None:
    session = open_session(models_dir / "copy" / "step.onnx", "cpu")
    def wrong_shapes(rows: int) -> list[ort.OrtValue]:
        return [ort.OrtValue.ortvalue_from_numpy(np.zeros((rows, 3), np.float32)) for _ in range(6)]

    wrong = BucketSteps(session, (4, 8), wrong_shapes)
    with pytest.raises(CudaGraphError, match=r"step failed for batch bucket 4 \(gpu_graph_id 1/2\)"):
        wrong.capture()


def test_engine_at_buckets_serves_the_plain_paths_numbers(models_dir: Path) -> None:
    """Sessions joining and leaving move the resident batch between buckets; every session's outputs are the
    plain path's to the last bit (CPU rows are batch-invariant at multiples of 4)."""
    rng = np.random.default_rng(3)
    calls = schedule(rng)
    inputs = rng.integers(0, 2, (len(calls), 32, 9)).astype(np.float32)
    plain, plain_sizes = run_schedule(Engine(models_dir / "copy", "cpu"), calls, inputs)
    fixed, sizes = run_schedule(Engine(models_dir / "copy", "cpu", buckets=BUCKETS), calls, inputs)
    assert all(size in BUCKETS for size in sizes)
    assert sizes == [4, 4, 8, 8, 16, 32, 32, 32, 32, 32, 8, 8, 8, 16, 16, 32, 8]  # up, hysteresis, down
    assert plain_sizes != sizes  # the plain path sizes its buffers to the padded batch
    for i in range(32):
        np.testing.assert_array_equal(np.array(fixed[i]), np.array(plain[i]), err_msg=f"session {i}")
