"""Single stock onnxruntime kernels at the step's sizes (the journal entry's first table).

`python docs/journal/results/2026-12-07-engine-against-torch-compile/op_floor.py` (one thread; run it on an idle box).
"""

from __future__ import annotations

import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper

F32 = TensorProto.FLOAT


def graph(nodes: list, inputs: list[str], inits: tuple = ()) -> bytes:
    """A one-output model over float32 inputs of any shape."""
    g = helper.make_graph(nodes, "op", [helper.make_tensor_value_info(n, F32, None) for n in inputs],
                          [helper.make_tensor_value_info("y", F32, None)], list(inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)], ir_version=10).SerializeToString()


def timed(model: bytes, feeds: dict[str, np.ndarray], runs: int = 200) -> tuple[float, np.ndarray]:
    """Median µs of one run, and the output."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    for _ in range(20):
        sess.run(None, feeds)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        sess.run(None, feeds)
        times.append(time.perf_counter() - start)
    return float(np.median(times)) * 1e6, sess.run(None, feeds)[0]


def main() -> None:
    node = helper.make_node
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [-1])
    ones = helper.make_tensor("ones", F32, [20, 1], [1.0] * 20)
    norms = {
        "ReduceL2": ([node("ReduceL2", ["x", "axes"], ["y"], keepdims=0)], (axes,)),
        "Sqrt(ReduceSumSquare)": ([node("ReduceSumSquare", ["x", "axes"], ["s"], keepdims=0),
                                   node("Sqrt", ["s"], ["y"])], (axes,)),
        "Sqrt(ReduceSum(Mul))": ([node("Mul", ["x", "x"], ["q"]), node("ReduceSum", ["q", "axes"], ["s"], keepdims=0),
                                  node("Sqrt", ["s"], ["y"])], (axes,)),
        "Sqrt(MatMul(Mul, ones))": ([node("Mul", ["x", "x"], ["q"]), node("MatMul", ["q", "ones"], ["s"]),
                                     node("Sqrt", ["s"], ["y"])], (ones,)),
    }
    d64 = TensorProto.DOUBLE
    powers = {
        "Pow": [node("Pow", ["w", "g"], ["y"])],
        "Exp(g Log w) float32": [node("Log", ["w"], ["l"]), node("Mul", ["l", "g"], ["m"]), node("Exp", ["m"], ["y"])],
        "Exp(g Log w) float64": [node("Cast", ["w"], ["wd"], to=d64), node("Cast", ["g"], ["gd"], to=d64),
                                 node("Log", ["wd"], ["l"]), node("Mul", ["l", "gd"], ["m"]),
                                 node("Exp", ["m"], ["yd"]), node("Cast", ["yd"], ["y"], to=F32)],
    }
    for batch, rows in ((64, 1024), (64, 128), (8, 1024)):
        print(f"B = {batch}, N = {rows}")
        x = np.random.default_rng(0).standard_normal((batch, rows, 20)).astype(np.float32)
        for name, (nodes, inits) in norms.items():
            us, _ = timed(graph(nodes, ["x"], inits), {"x": x})
            print(f"  {name:28s} {us:8.1f} us")
        w = np.random.default_rng(1).random((batch, 1, rows)).astype(np.float32)
        g = (1 + np.random.default_rng(2).random((batch, 1, 1)) * 5).astype(np.float32)
        exact = w.astype(np.float64) ** g.astype(np.float64)
        for name, nodes in powers.items():
            us, y = timed(graph(nodes, ["w", "g"]), {"w": w, "g": g})
            print(f"  {name:28s} {us:8.1f} us   max relative error {np.max(np.abs(y - exact) / exact):.1e}")


if __name__ == "__main__":
    main()
