"""The CUDA execution provider: used when it really loads, state kept on the device, numbers as on CPU.
Where CUDA does not load (CI), `cuda` must fail loudly and `auto` must fall back to CPU."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path

import numpy as np
import pytest
from helpers import Offline, bits, service_config

from service.client import NTMClient
from service.engine import ModelLoadError, resolve_provider
from service.ort_session import ProviderUnavailable, open_session
from service.server import ServerThread


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
