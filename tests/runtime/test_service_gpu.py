"""The CUDA execution provider: used when it really loads, state kept on the device, numbers as on CPU.
Where CUDA does not load (CI), `cuda` must fail loudly and `auto` must fall back to CPU.

CUDA graphs (`--cuda-graph`): served outputs equal the same buckets run without graphs to the last bit, and
the CPU's within float noise, while sessions join and leave and the batch moves between buckets; a step graph
onnxruntime cannot capture is refused at load with the reason. Their CPU side (bucket choice, settings, the
refusal on CPU) is tests/test_service_buckets.py, run in CI.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import Offline, bits, run_schedule, schedule, service_config

from ntm_serve.client.sdk import NTMClient
from ntm_serve.contract import GRAPH_FILES
from ntm_serve.runtime.engine import Engine, ModelLoadError, resolve_provider
from ntm_serve.runtime.ort_session import ProviderUnavailable, open_session
from ntm_serve.server.server import ServerThread


@cache
def cuda_loads(step: Path) -> bool:
    try:
        open_session(step, "cuda")
    except ProviderUnavailable:
        return False
    return True


@pytest.fixture(scope="module")
def step_graph(copy_dir: Path) -> Path:
    return copy_dir / "copy" / "step.onnx"


def test_without_cuda_cuda_fails_loudly_and_auto_runs_on_cpu(step_graph: Path, copy_dir: Path) -> None:
    if cuda_loads(step_graph):
        pytest.skip("CUDA loads here: covered by the GPU test")
    assert resolve_provider("auto", 0, step_graph) == "cpu"
    with pytest.raises(ModelLoadError, match="cuda"):
        resolve_provider("cuda", 0, step_graph)
    with pytest.raises(ModelLoadError), ServerThread(service_config(copy_dir, provider="cuda")):
        pass


@pytest.mark.gpu
def test_cuda_serves_from_device_state(step_graph: Path, copy_dir: Path, offline: Offline) -> None:
    if not cuda_loads(step_graph):
        pytest.skip("the CUDA execution provider does not load on this machine (no GPU or no CUDA 13/cuDNN 9)")
    assert resolve_provider("auto", 0, step_graph) == "cuda"
    rng = np.random.default_rng(7)
    inputs = [bits(rng, 30) for _ in range(32)]
    with ServerThread(service_config(copy_dir, provider="cuda")) as server, NTMClient(server.target) as client:
        assert client.list_models()[0].provider == "CUDAExecutionProvider"
        engine = server.server.models["copy"].batcher.engine
        assert all(t.device_name() == "cuda" for t in engine.pool.tensors)  # the state pool lives on the GPU

        def run(i: int) -> np.ndarray:
            session = client.create_session("copy").session_id
            return np.concatenate([client.step(session, chunk).outputs for chunk in np.split(inputs[i], 5)])

        with ThreadPoolExecutor(32) as pool:
            results = list(pool.map(run, range(32)))
    for i, got in enumerate(results):  # TF32 is off: float32 matmuls, CPU-close numbers
        np.testing.assert_allclose(got, offline.run(inputs[i])["outputs"], rtol=0, atol=1e-5)


BUCKETS = (4, 8, 16, 32)


def needs_cuda(step_graph: Path) -> None:
    if not cuda_loads(step_graph):
        pytest.skip("the CUDA execution provider does not load on this machine (no GPU or no CUDA 13/cuDNN 9)")


@pytest.mark.gpu
def test_cuda_graphs_step_the_numbers_of_the_same_buckets_without_graphs(step_graph: Path, models_dir: Path) -> None:
    """The same calls (sessions joining and leaving, the batch moving between buckets) on three engines: CUDA
    graphs, the same buckets on CUDA without graphs (bit for bit: the same kernels at the same sizes), and the
    plain CPU path (float noise: other kernels)."""
    needs_cuda(step_graph)
    rng = np.random.default_rng(11)
    calls = schedule(rng)
    inputs = rng.integers(0, 2, (len(calls), 32, 9)).astype(np.float32)
    graphs = Engine(models_dir / "copy", "cuda", buckets=BUCKETS, cuda_graph=True)
    assert graphs.fixed is not None and graphs.fixed.cuda_graph
    got, sizes = run_schedule(graphs, calls, inputs)
    same, same_sizes = run_schedule(Engine(models_dir / "copy", "cuda", buckets=BUCKETS), calls, inputs)
    cpu, _ = run_schedule(Engine(models_dir / "copy", "cpu"), calls, inputs)
    assert sizes == same_sizes and set(sizes) == set(BUCKETS)  # every bucket (and both directions) served
    for i in range(32):
        np.testing.assert_array_equal(np.array(got[i]), np.array(same[i]), err_msg=f"session {i}")
        np.testing.assert_allclose(np.array(got[i]), np.array(cpu[i]), rtol=0, atol=1e-5, err_msg=f"session {i}")


@pytest.mark.gpu
def test_cuda_graph_server_serves_concurrent_sessions(step_graph: Path, copy_dir: Path, offline: Offline) -> None:
    needs_cuda(step_graph)
    rng = np.random.default_rng(5)
    inputs = [bits(rng, 30) for _ in range(24)]
    config = service_config(copy_dir, provider="cuda", cuda_graph=True, batch_buckets=(4, 8, 16, 32, 64))
    with ServerThread(config) as server, NTMClient(server.target) as client:
        engine = server.server.models["copy"].batcher.engine
        assert engine.fixed is not None and engine.fixed.cuda_graph

        def run(i: int) -> np.ndarray:
            session = client.create_session("copy").session_id
            return np.concatenate([client.step(session, chunk).outputs for chunk in np.split(inputs[i], 3 + i % 3)])

        with ThreadPoolExecutor(24) as pool:  # sessions come and go at different times: the batch changes size
            results = list(pool.map(run, range(24)))
    for i, got in enumerate(results):
        np.testing.assert_allclose(got, offline.run(inputs[i])["outputs"], rtol=0, atol=1e-5)


def with_control_flow(source: Path, target: Path) -> Path:
    """A copy of a model folder whose step graph computes `output` through an If node (both branches pass it
    through): the same numbers, but onnxruntime refuses CUDA graphs for graphs with control flow."""
    target.mkdir(parents=True)
    for name in GRAPH_FILES.values():
        (target / name).symlink_to(source / name)
    (target / GRAPH_FILES["step"]).unlink()
    model = onnx.load(source / GRAPH_FILES["step"])
    graph = model.graph
    for node in graph.node:
        node.output[:] = ["output_inner" if o == "output" else o for o in node.output]
    h = onnx.helper

    def branch(name: str) -> onnx.GraphProto:
        out = h.make_tensor_value_info("output_" + name, onnx.TensorProto.FLOAT, None)
        return h.make_graph([h.make_node("Identity", ["output_inner"], ["output_" + name])], name, [], [out])

    graph.node.extend([
        h.make_node("ReduceMax", ["input"], ["input_max"], keepdims=0),  # not a constant: the If stays
        h.make_node("IsInf", ["input_max"], ["never"]),
        h.make_node("If", ["never"], ["output"], then_branch=branch("then"), else_branch=branch("else")),
    ])
    onnx.checker.check_model(model)
    onnx.save(model, target / GRAPH_FILES["step"])
    return target


def test_the_control_flow_step_graph_serves_the_same_numbers(models_dir: Path, tmp_path: Path) -> None:
    """On CPU (CI): the If-wrapped model of the refusal test below is the same model, so there only CUDA graphs
    can make the difference."""
    folder = with_control_flow(models_dir / "copy", tmp_path / "copy")
    calls = schedule(np.random.default_rng(2))[:6]
    inputs = np.random.default_rng(2).integers(0, 2, (6, 32, 9)).astype(np.float32)
    wrapped, _ = run_schedule(Engine(folder, "cpu"), calls, inputs)
    plain, _ = run_schedule(Engine(models_dir / "copy", "cpu"), calls, inputs)
    for i in range(32):
        np.testing.assert_array_equal(np.array(wrapped[i]), np.array(plain[i]))
    assert any(n.op_type == "If" for n in onnx.load(folder / GRAPH_FILES["step"]).graph.node)


@pytest.mark.gpu
def test_a_step_graph_that_cannot_be_captured_is_refused_with_the_reason(step_graph: Path, models_dir: Path,
                                                                        tmp_path: Path) -> None:
    needs_cuda(step_graph)
    with_control_flow(models_dir / "copy", tmp_path / "models" / "copy")
    with ServerThread(service_config(tmp_path / "models", provider="cuda")):
        pass  # without graphs it serves on CUDA: the refusal below is the graphs'
    with pytest.raises(ModelLoadError, match="refused CUDA graphs") as refused, ServerThread(
            service_config(tmp_path / "models", provider="cuda", cuda_graph=True)):
        pass
    assert "control flow" in str(refused.value)


@pytest.mark.gpu
@pytest.mark.parametrize("cuda_graph", [False, True], ids=["plain", "cuda_graph"])
def test_sessions_of_other_memory_sizes_run_on_cuda_beside_the_trained_one(step_graph: Path, copy_dir: Path,
                                                                           cuda_graph: bool) -> None:
    """Issue 24 on the GPU: sessions at N = 64 and 1024 (their groups made at run time, without CUDA graphs) step
    concurrently with trained-N ones (under CUDA graphs when asked): each within float noise of the CPU graphs at
    its N, and a size's group freed with its last session."""
    needs_cuda(step_graph)
    rng = np.random.default_rng(24)
    sizes = [0, 0, 64, 64, 1024]
    inputs = [bits(rng, 30) for _ in sizes]
    config = service_config(copy_dir, provider="cuda", cuda_graph=cuda_graph,
                            batch_buckets=(4, 8, 16, 32, 64) if cuda_graph else ())
    with ServerThread(config) as server, NTMClient(server.target) as client:
        engine = server.server.models["copy"].batcher.engine

        def run(i: int) -> tuple[str, np.ndarray]:
            session = client.create_session("copy", memory_rows=sizes[i]).session_id
            return session, np.concatenate([client.step(session, c).outputs for c in np.split(inputs[i], 3)])

        with ThreadPoolExecutor(len(sizes)) as pool:
            results = list(pool.map(run, range(len(sizes))))
        assert sorted(engine.groups) == [64, 128, 1024]
        for (_, got), n, x in zip(results, sizes, inputs, strict=True):
            want = Offline(copy_dir / "copy", rows=n).run(x)["outputs"]
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-5, err_msg=f"N={n}")
        for (session, _), n in zip(results, sizes, strict=True):
            if n:
                client.delete_session(session)
        assert sorted(engine.groups) == [128]
