"""Which op's float32 rounding moves onnxruntime away from float64 over a run? Each op type upcast in turn (Cast its
float32 inputs to double, the op in double, Cast back) and the step graph looped over the task's long inputs: per
checkpoint step, the median over 8 sequences of the largest output error so far against a float64 torch run.

Usage, from the repository root:
  python docs/journal/results/2026-12-07-memory-rows/upcast.py models/copy STEPS N [OP[+OP...],...]
  (CK=50,100,... sets the checkpoint steps)
"""

from __future__ import annotations

import copy
import os
import sys
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, shape_inference

from ntm_serve.export.model_files import load_checkpoint
from ntm_serve.export.parity import long_inputs, onnx_initial_state, onnx_step, torch_step
from ntm_serve.export.runtime import session

BATCH = 8


def upcast(model: onnx.ModelProto, op_types: set[str]) -> onnx.ModelProto:
    """`model` with every node of `op_types` computed in float64 between Casts."""
    model = copy.deepcopy(model)
    inferred = shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type
             for v in (*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output)}
    types.update({t.name: t.data_type for t in model.graph.initializer})
    nodes = []
    for node in model.graph.node:
        if node.op_type not in op_types:
            nodes.append(node)
            continue
        wide = copy.deepcopy(node)
        for k, name in enumerate(node.input):
            if name and types.get(name) == TensorProto.FLOAT:
                nodes.append(helper.make_node("Cast", [name], [f"{name}__d{node.output[0]}"], to=TensorProto.DOUBLE))
                wide.input[k] = f"{name}__d{node.output[0]}"
        narrow = [o for o in node.output if types.get(o) == TensorProto.FLOAT]
        wide.output[:] = [f"{o}__d" if o in narrow else o for o in node.output]
        nodes.append(wide)
        nodes += [helper.make_node("Cast", [f"{o}__d"], [o], to=TensorProto.FLOAT) for o in narrow]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    del model.graph.value_info[:]
    return model


def main() -> None:
    torch.set_num_threads(1)
    folder, steps, rows = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    variants = [v for v in sys.argv[4].split(",") if v] if len(sys.argv) > 4 else []
    checkpoints = [int(c) for c in os.environ.get("CK", "50,100,200,300,500,700,1000").split(",")]
    ckpt = load_checkpoint(folder)
    model = onnx.load(str(folder / "step.onnx"))
    inputs = long_inputs(ckpt.task, ckpt.model.config.input_size, steps, BATCH)
    start = onnx_initial_state(session(str(folder / "initial_state.onnx"), threads=1), BATCH, rows)
    exact = copy.deepcopy(ckpt.model).double()
    wide = {k: v.astype(np.float64) for k, v in start.items()}
    narrow = dict(start)
    reference, torch32 = [], []
    for x in inputs:
        p, wide = torch_step(exact, x.astype(np.float64), wide, ckpt.output_activation)
        reference.append(p)
        p, narrow = torch_step(ckpt.model, x, narrow, ckpt.output_activation)
        torch32.append(p)
    exact_out = np.stack(reference)

    def curve(out: np.ndarray) -> str:
        worst = np.maximum.accumulate(np.abs(out - exact_out).max(axis=2), axis=0)  # (T, B)
        return "  ".join(f"{np.median(worst[min(t, len(worst)) - 1]):.1e}" for t in checkpoints)

    print(f"{'steps':40s} " + "  ".join(f"{t:>7d}" for t in checkpoints))
    print(f"{'torch float32':40s} {curve(np.stack(torch32))}")
    for variant in ["none", *variants]:
        run = session(upcast(model, set() if variant == "none" else set(variant.split("+"))), threads=1)
        state, outs = dict(start), []
        for x in inputs:
            p, state = onnx_step(run, x, state)
            outs.append(p)
        print(f"{variant:40s} {curve(np.stack(outs))}", flush=True)


if __name__ == "__main__":
    main()
