"""One wrapper around the torch exporter, so every graph (model or single op) is exported the same way.

Exporter: `torch.onnx.export(..., dynamo=True)` (the torch.export-based exporter, the default and the
only maintained one in torch 2.13; the TorchScript exporter is deprecated). Opset 18: the opset the
exporter's op library (onnxscript torchlib) is written for, so no version conversion runs, and one
that onnxruntime 1.31 supports fully on the CPU and CUDA providers.

Trap: the exporter's own optimiser (`optimize=True`, onnxscript 0.7.2) rewrites `x + c` to `x` when
`c` is within 1e-8 of zero, which deletes the model's `+ 1e-8` cosine guard and `+ 1e-30` sharpening
floors (a zero key then gives NaN instead of a uniform weighting). So the exporter runs unoptimised
and `_tidy` applies only the value-preserving passes: constant folding, dead-node removal, initializer
lifting/deduplication and common-subexpression elimination, then `ntm_serve/export/passes/pipeline.py` removes
nodes with exact local rewrites (a documented list; never an algebraic simplification).

The output is then made canonical: node-level metadata (Python stack traces with absolute paths, FX
node text) and doc strings are dropped, so the bytes depend only on the weights and the code.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import warnings
from collections.abc import Iterator, Sequence

import onnx
import onnx_ir as ir
import onnx_ir.passes.common as ir_passes
import onnxscript.optimizer
import torch
from torch import nn

from ntm_serve.export.passes import pipeline

OPSET = 18
PRODUCER = "ntm-serve.export"


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporter's chatter (torchvision op registration, deprecation notes); errors still raise."""
    names = ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript", "onnx_ir")
    loggers = [logging.getLogger(name) for name in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def torch_to_onnx(
    module: nn.Module,
    args: tuple[torch.Tensor, ...],
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic: Sequence[dict[int, str]],
    graph_name: str,
    lean: bool = True,
    without: tuple[str, ...] = (),
    minimums: dict[str, int] | None = None,
) -> onnx.ModelProto:
    """Export `module(*args)` to a canonical single-file ModelProto.

    `dynamic[i]` maps axis -> symbol name for argument i (e.g. {0: "B"}); the same name means the
    same size. Dynamic axes are declared explicitly, so torch.export raises instead of silently
    baking an example size into the graph. `lean=False` skips the node-saving passes of
    `ntm_serve/export/passes/pipeline.py` (the tests compare both graphs); `without` skips the passes it names.
    `minimums`: the least size of a named axis (the memory rows N >= the shift's S // 2, so the sizes of the
    shift's slices simplify to N instead of clamped expressions).
    """
    dims: dict[str, torch.export.Dim] = {}
    least = minimums or {}
    dynamic_shapes: tuple = tuple(
        {axis: dims.setdefault(name, torch.export.Dim(name, min=least[name]) if name in least
                               else torch.export.Dim(name)) for axis, name in spec.items()}
        for spec in dynamic
    )
    params = list(inspect.signature(module.forward).parameters.values())
    if len(params) == 1 and params[0].kind is inspect.Parameter.VAR_POSITIONAL:
        dynamic_shapes = (dynamic_shapes,)  # forward(*inputs): one structure holding every argument's spec
    module = module.eval()
    with _quiet_exporter(), torch.no_grad():
        program = torch.onnx.export(
            module,
            args,
            input_names=list(input_names),
            output_names=list(output_names),
            dynamic_shapes=dynamic_shapes,
            opset_version=OPSET,
            dynamo=True,
            external_data=False,
            optimize=False,  # see the module docstring: its rewrite rules drop `+ eps`
            verbose=False,
        )
        assert program is not None
        model = program.model
        _tidy(model)
        _name_io(model.graph, input_names, output_names)
        proto = ir.serde.serialize_model(model)
    _reduce_over_size_one_axes(proto.graph)
    if lean:
        pipeline.lean(proto.graph, without)
    proto = canonicalise(proto, graph_name)
    onnx.checker.check_model(proto, full_check=True)
    return proto


def _tidy(model: ir.Model) -> None:
    """Value-preserving clean-up of the raw export (in place): no algebraic rewrites."""
    onnxscript.optimizer.fold_constants(model)
    ir.passes.Sequential(
        ir_passes.RemoveUnusedNodesPass(),
        ir_passes.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
        ir_passes.DeduplicateInitializersPass(),
        ir_passes.CommonSubexpressionEliminationPass(),
        ir_passes.ShapeInferencePass(),  # types for the CastLike check below
    )(model)
    _drop_same_type_castlike(model.graph)
    ir.passes.Sequential(
        ir_passes.RemoveUnusedNodesPass(),
        ir_passes.OutputFixPass(),  # an output that is an input unchanged (feed-forward controller_c) gets an Identity
    )(model)


def _name_io(graph: ir.Graph, input_names: Sequence[str], output_names: Sequence[str]) -> None:
    """Give graph inputs/outputs the requested names.

    When an output *is* an input (the feed-forward controller passes `c` through), the exporter names
    the shared value after the output; after OutputFixPass the input is left as `<output>_orig`.
    """
    for value, name in zip(graph.inputs, input_names, strict=True):
        value.name = name
    got = [value.name for value in graph.outputs]
    if got != list(output_names):
        raise RuntimeError(f"exported outputs {got}, expected {list(output_names)}")


def _drop_same_type_castlike(graph: ir.Graph) -> None:
    """`CastLike(constant, x)` where the constant already has x's type is the identity: use the constant.

    The exporter emits one per Python scalar in the model (`1.0 - gate`, `+ 1e-8`, ...); the constant
    folder leaves them because `x` is not constant, and onnxruntime would run them as Cast nodes.
    """
    outputs = set(graph.outputs)
    for node in list(graph):
        if node.op_type != "CastLike" or node.domain not in ("", "ai.onnx"):
            continue
        source, like = node.inputs
        if source is None or like is None or node.outputs[0] in outputs:
            continue
        if source.const_value is not None and source.dtype is not None and source.dtype == like.dtype:
            ir.convenience.replace_all_uses_with(node.outputs[0], source)


def _reduce_over_size_one_axes(graph: onnx.GraphProto) -> None:
    """ReduceProd over axes of static size 1 is a copy: rewrite it as Squeeze (or Identity with keepdims).

    `memory.write` multiplies the erase terms of its W heads with a ReduceProd over the head axis; with
    one write head (every shipped model) that is a full (B, N, M) pass that changes nothing, and it was
    the single most expensive kernel of the step at batch 64 (docs/export.md). The result is bit-identical.
    """
    shapes = {v.name: v.type.tensor_type.shape for v in (*graph.input, *graph.value_info, *graph.output)}
    constants = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type != "ReduceProd" or node.domain not in ("", "ai.onnx") or len(node.input) < 2:
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        shape = shapes.get(node.input[0])
        if node.input[1] not in constants or shape is None or attrs.get("noop_with_empty_axes", 0):
            continue
        rank = len(shape.dim)
        axes = [int(a) % rank for a in constants[node.input[1]].reshape(-1)]
        if not axes or not all(shape.dim[a].HasField("dim_value") and shape.dim[a].dim_value == 1 for a in axes):
            continue
        keepdims = attrs.get("keepdims", 1)
        del node.attribute[:]
        if keepdims:
            node.op_type = "Identity"
            del node.input[1:]
        else:
            node.op_type = "Squeeze"  # Squeeze(data, axes): the same axes tensor


def canonicalise(model: onnx.ModelProto, graph_name: str) -> onnx.ModelProto:
    """Strip everything that is not the computation (stack traces, paths, doc strings); fix the producer."""
    for graph in _graphs(model.graph):
        graph.doc_string = ""
        for node in graph.node:
            node.doc_string = ""
            del node.metadata_props[:]
        for value in (*graph.input, *graph.output, *graph.value_info):
            value.doc_string = ""
            del value.metadata_props[:]
        for init in graph.initializer:
            init.doc_string = ""
            del init.metadata_props[:]
        del graph.metadata_props[:]
    model.graph.name = graph_name
    model.doc_string = ""
    del model.metadata_props[:]
    model.producer_name = PRODUCER
    model.producer_version = torch.__version__.split("+")[0]  # same bytes from the CPU and CUDA builds
    return model


def _graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """The graph and every subgraph inside it (Scan/Loop/If bodies)."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _graphs(attr.g)
            for sub in attr.graphs:
                yield from _graphs(sub)
