"""The committed generated code matches its sources, and the contract's fixed names are all there."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from helpers import ROOT

from ntm_serve.api.proto_gen.ntm.v1 import ntm_pb2
from ntm_serve.runtime.graphs import GRAPHS

FIXED_FIELDS = {
    "ListModelsResponse": {"models"},
    "ModelInfo": {"name", "task", "input_size", "output_size", "memory_rows", "memory_width", "read_heads",
                  "write_heads", "provider"},
    "CreateSessionRequest": {"model", "ttl_seconds"},
    "Session": {"session_id", "model", "steps", "expires_at", "state"},
    "GetSessionRequest": {"session_id", "include_state"},
    "DeleteSessionRequest": {"session_id"},
    "StepRequest": {"session_id", "inputs", "return_attention", "request_id"},
    "StepResponse": {"session_id", "outputs", "steps", "attention", "request_id", "error"},
    "Attention": {"read_weights", "write_weights"},
    "PackedStepRequest": {"entries", "inputs", "return_attention", "request_id"},
    "PackedEntry": {"session_id", "expect_steps"},
    "PackedStepResponse": {"request_id", "outputs", "steps", "attention", "error", "entry_errors"},
    "ExportSessionRequest": {"session_id"},
    "SessionState": {"model", "steps", "tensors"},
    "ImportSessionRequest": {"state"},
    "Tensor": {"shape", "values"},
    "WatchSessionRequest": {"session_id", "every", "heads_only"},
    "WatchFrame": {"session_id", "steps", "snapshot", "dropped", "inputs", "outputs", "read_weights", "write_weights",
                   "read_vectors", "memory"},
}


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and "__pycache__" not in p.parts}


def test_generated_grpc_code_is_up_to_date(tmp_path: Path) -> None:
    subprocess.run([sys.executable, str(ROOT / "protos" / "generate.py"), "--out", str(tmp_path)], check=True,
                   capture_output=True)
    fresh, committed = _files(tmp_path), _files(ROOT / "ntm_serve" / "api" / "proto_gen")
    assert fresh.keys() == committed.keys()
    stale = [name for name in fresh if fresh[name] != committed[name]]
    assert not stale, f"run `make proto`: {stale} differ from a fresh generation"


def test_helper_graphs_are_up_to_date(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "ntm_serve.runtime.graphs.build", "--out", str(tmp_path)], check=True,
                   capture_output=True, cwd=ROOT)
    for name in GRAPHS:
        committed = (ROOT / "ntm_serve" / "runtime" / "graphs" / f"{name}.onnx").read_bytes()
        assert (tmp_path / f"{name}.onnx").read_bytes() == committed, f"run `make proto`: {name}.onnx is stale"


def test_contract_names() -> None:
    service = ntm_pb2.DESCRIPTOR.services_by_name["NTM"]
    assert ntm_pb2.DESCRIPTOR.package == "ntm.v1"
    assert {m.name for m in service.methods} == {"ListModels", "CreateSession", "GetSession", "DeleteSession", "Step",
                                                 "StreamSteps", "StreamPackedSteps", "ExportSession", "ImportSession",
                                                 "WatchSession"}
    for message, fields in FIXED_FIELDS.items():
        assert fields <= set(ntm_pb2.DESCRIPTOR.message_types_by_name[message].fields_by_name), message
    tensor = ntm_pb2.Tensor.DESCRIPTOR.fields_by_name
    assert tensor["shape"].type == tensor["shape"].TYPE_INT64 and tensor["values"].type == tensor["values"].TYPE_FLOAT
    error = ntm_pb2.StepResponse.DESCRIPTOR.fields_by_name["error"]
    assert error.message_type.full_name == "google.rpc.Status"
    assert ntm_pb2.SessionState.DESCRIPTOR.fields_by_name["tensors"].message_type.GetOptions().map_entry
