"""Build the helper graphs of `ntm_serve.runtime.graphs` (dev only: needs `onnx`): `python -m
ntm_serve.runtime.graphs.build`."""

from __future__ import annotations

import argparse
from pathlib import Path

import onnx
from onnx import TensorProto, helper

from ntm_serve.contract import STATE_NAMES, STATE_RANKS
from ntm_serve.runtime.graphs import GRAPHS, OPSET

HERE = Path(__file__).resolve().parent


def _float(name: str, state: str, rows: str) -> onnx.ValueInfoProto:
    """A float state tensor with `rows` first and symbolic sizes after: one graph serves every model."""
    dims = [rows, *(f"{state}_{i}" for i in range(1, STATE_RANKS[state]))]
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, dims)


def _rows(name: str, dim: str) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.INT64, [dim])


def _model(nodes: list, inputs: list, outputs: list, name: str, initializers: list | None = None) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, name, inputs, outputs, initializer=initializers or [])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="ntm-serve")
    model.ir_version = 9
    onnx.checker.check_model(model, full_check=True)
    return model


def _last_axis() -> onnx.TensorProto:
    return helper.make_tensor("last_axis", TensorProto.INT64, [1], [-1])


def gather() -> onnx.ModelProto:
    nodes = [helper.make_node("Gather", [f"pool_{s}", "slots"], [s], axis=0) for s in STATE_NAMES]
    inputs = [_rows("slots", "B"), *(_float(f"pool_{s}", s, "C") for s in STATE_NAMES)]
    return _model(nodes, inputs, [_float(s, s, "B") for s in STATE_NAMES], "gather")


def scatter() -> onnx.ModelProto:
    nodes = [helper.make_node("Unsqueeze", ["slots", "last_axis"], ["index"])]  # (B, 1)
    nodes += [helper.make_node("ScatterND", [f"pool_{s}", "index", f"update_{s}"], [f"pool_out_{s}"])
              for s in STATE_NAMES]
    inputs = [_rows("slots", "B"), *(_float(f"pool_{s}", s, "C") for s in STATE_NAMES),
              *(_float(f"update_{s}", s, "B") for s in STATE_NAMES)]
    outputs = [_float(f"pool_out_{s}", s, "C") for s in STATE_NAMES]
    return _model(nodes, inputs, outputs, "scatter", [_last_axis()])


def copy_rows() -> onnx.ModelProto:
    nodes = [helper.make_node("Unsqueeze", ["dst_rows", "last_axis"], ["index"])]  # (K, 1)
    for s in STATE_NAMES:
        nodes.append(helper.make_node("Gather", [f"src_{s}", "src_rows"], [f"rows_{s}"], axis=0))
        nodes.append(helper.make_node("ScatterND", [f"dst_{s}", "index", f"rows_{s}"], [f"dst_out_{s}"]))
    inputs = [_rows("src_rows", "K"), _rows("dst_rows", "K"), *(_float(f"src_{s}", s, "S") for s in STATE_NAMES),
              *(_float(f"dst_{s}", s, "D") for s in STATE_NAMES)]
    outputs = [_float(f"dst_out_{s}", s, "D") for s in STATE_NAMES]
    return _model(nodes, inputs, outputs, "copy_rows", [_last_axis()])


BUILDERS = {"gather": gather, "scatter": scatter, "copy_rows": copy_rows}
assert tuple(BUILDERS) == GRAPHS


def build_all(out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, builder in BUILDERS.items():
        path = out / f"{name}.onnx"
        path.write_bytes(builder().SerializeToString(deterministic=True))
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ntm_serve.runtime.graphs.build", description=__doc__)
    parser.add_argument("--out", type=Path, default=HERE)
    for path in build_all(parser.parse_args(argv).out):
        print(path)


if __name__ == "__main__":
    main()
