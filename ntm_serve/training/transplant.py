"""Warm starts across shapes (`--init-from`): copy a trained NTM's weights into an NTM of other sizes (or an LSTM
baseline's into one with other input and output widths).

A parameter's axes are laid out as segments (the controller's input is [x, read vector 1..R, h]; a head
projection's rows are per head [key, scalars, erase, add]). Each segment's shared prefix is copied and its
new entries are filled by rule, so the target starts as close to its source as the new sizes allow:
- a new task input or output channel keeps its fresh initialisation (repeat copy from copy);
- a new memory column (a wider memory, e.g. one that holds a whole 8x8 image) is read by nothing at first:
  the controller and output columns that read it, the keys' new components and r0's are zero, and the
  adds that write it start small, so the gradient, not chance, decides what goes there;
- a new write head (appended) has zero keys and small adds, so it changes little until trained;
- a new controller unit (a wider controller) is fresh inside but read by nothing at first (every column of h's new
  units is zero: the gates, the head projections, the output), so the wider model starts as its source's function
  and the gradient grows the new units' part from there; likewise a new input layer's features (`input_layer`).
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
from torch import Tensor, nn

from ntm_serve.training.config import NTMConfig
from ntm_serve.training.model import NTM, LSTMBaseline

Fill = Literal["fresh", "zero", "small"]
SMALL = 0.1  # scale of a new add component's fresh initialisation
# Per target entry: copied from the source, or new and filled by its segment's rule. Higher codes win in 2-D.
COPIED, FILL_CODES = 0, {"fresh": 1, "zero": 2, "small": 3}


class Segment(NamedTuple):
    size: int
    fill: Fill  # what the entries beyond the source's size get


Layout = list[Segment]


def controller_input(c: NTMConfig) -> Layout:
    """Columns of the controller's weight: the task input, each read vector, then h (LSTM only)."""
    reads = [Segment(c.memory_width, "zero")] * c.read_heads
    return [*features(c), *reads] + ([Segment(c.controller_size, "zero")] if c.controller == "lstm" else [])


def features(c: NTMConfig) -> Layout:
    """What the controller and the heads' skip see of a step's input: the task input, then the input layer's
    features (read by nothing at first)."""
    return [Segment(c.input_size, "fresh"), Segment(c.input_layer, "zero")]


def controller_rows(c: NTMConfig) -> Layout:
    """Rows of the controller's weight and bias: the LSTM's four gates (i, f, g, o) of H units each, or H units."""
    return [Segment(c.controller_size, "fresh")] * (4 if c.controller == "lstm" else 1)


def output_input(c: NTMConfig) -> Layout:
    """Columns of the output layer: h, then each read vector."""
    return [Segment(c.controller_size, "zero"), *[Segment(c.memory_width, "zero")] * c.read_heads]


def head_rows(c: NTMConfig, heads: int, write: bool) -> Layout:
    """Rows of a head projection: per head the key, the scalars and shift (beta, gate, gamma, S), erase and add."""
    m = c.memory_width
    one = [Segment(m, "zero"), Segment(3 + c.shift_range, "fresh")]
    return one * heads if not write else [*one, Segment(m, "fresh"), Segment(m, "small")] * heads


def whole(size: int) -> Layout:
    return [Segment(size, "fresh")]


def layouts(c: NTMConfig) -> dict[str, tuple[Layout, ...]]:
    """Every parameter's layout, one per axis, by state-dict name (names missing here must match in shape)."""
    ctrl = "controller.gates" if c.controller == "lstm" else "controller.layer"
    out: dict[str, tuple[Layout, ...]] = {
        f"{ctrl}.weight": (controller_rows(c), controller_input(c)),
        f"{ctrl}.bias": (controller_rows(c),),
        "h0": (whole(c.controller_size),),
        "c0": (whole(c.controller_size),),
        "input_layer.weight": (whole(c.input_layer), whole(c.input_size)),
        "input_layer.bias": (whole(c.input_layer),),
        "output.weight": (whole(c.output_size), output_input(c)),
        "output.bias": (whole(c.output_size),),
        "r0": (whole(c.read_heads), [Segment(c.memory_width, "zero")]),
    }
    for name, heads, write in (("read_proj", c.read_heads, False), ("write_proj", c.write_heads, True)):
        rows = head_rows(c, heads, write)
        out |= {f"{name}.linear.weight": (rows, [Segment(c.controller_size, "zero")]), f"{name}.linear.bias": (rows,),
                f"{name}.skip.weight": (rows, features(c))}
    return out


def segment_index(source: Layout, target: Layout) -> tuple[Tensor, Tensor, Tensor]:
    """Along one axis: (source positions, their target positions) of the shared entries, and each target
    position's fill code (COPIED or FILL_CODES)."""
    if len(source) > len(target):
        raise ValueError(f"layouts lose segments: {len(source)} -> {len(target)}")
    source = source + [Segment(0, "fresh")] * (len(target) - len(source))  # more heads: appended, all new
    src_idx, dst_idx, fill = [], [], []
    s0 = d0 = 0
    for s, d in zip(source, target, strict=True):
        shared = min(s.size, d.size)
        src_idx += range(s0, s0 + shared)
        dst_idx += range(d0, d0 + shared)
        fill += [COPIED] * shared + [FILL_CODES[d.fill]] * (d.size - shared)
        s0, d0 = s0 + s.size, d0 + d.size
    return torch.tensor(src_idx), torch.tensor(dst_idx), torch.tensor(fill)


@torch.no_grad()
def remap(src: Tensor, fresh: Tensor, source: tuple[Layout, ...], target: tuple[Layout, ...]) -> Tensor:
    """The target parameter: shared entries from `src`, new ones from `fresh` by their fill rule. (1-D or 2-D)"""
    out = fresh.clone()
    maps = [segment_index(s, t) for s, t in zip(source, target, strict=True)]
    fills = [m[2] for m in maps]
    # 2-D: an entry new along either axis is new, and the higher code rules (a zero column beats a fresh row)
    fill = torch.maximum(fills[0].unsqueeze(1), fills[1].unsqueeze(0)) if len(maps) == 2 else fills[0]
    out[fill == FILL_CODES["zero"]] = 0.0
    out[fill == FILL_CODES["small"]] *= SMALL
    if len(maps) == 2:
        out[maps[0][1].unsqueeze(1), maps[1][1].unsqueeze(0)] = src[maps[0][0].unsqueeze(1), maps[1][0].unsqueeze(0)]
    else:
        out[maps[0][1]] = src[maps[0][0]]
    return out


def baseline_layouts(model: LSTMBaseline) -> dict[str, tuple[Layout, ...]]:
    """The LSTM baseline's parameters that depend on the task: the first layer's input columns and the output rows
    (a new task channel keeps its fresh initialisation, as in the NTM)."""
    lstm = model.lstm
    return {
        "lstm.weight_ih_l0": (whole(4 * lstm.hidden_size), whole(lstm.input_size)),
        "output.weight": (whole(model.output.out_features), whole(lstm.hidden_size)),
        "output.bias": (whole(model.output.out_features),),
    }


@torch.no_grad()
def transplant(source: nn.Module, target: nn.Module) -> None:
    """Warm-start `target` from a trained NTM of another task or other sizes (see the module docstring), or an LSTM
    baseline from one of another task.

    Parameters of equal shape are copied; the task's input/output widths, the memory width, the number of
    write heads (new heads appended), the controller's size (wider only) and the input layer may differ. A
    head input skip the source lacks (`heads_see_input`) keeps its zero initialisation.
    """
    if isinstance(source, LSTMBaseline) and isinstance(target, LSTMBaseline):
        sizes = [(m.lstm.hidden_size, m.lstm.num_layers) for m in (source, target)]
        if sizes[0] != sizes[1]:
            raise ValueError(f"init_from cannot change the LSTM's hidden size or layers: {sizes[0]} -> {sizes[1]}")
        _copy_all(source.state_dict(), target.state_dict(), baseline_layouts(source), baseline_layouts(target))
        return
    if not (isinstance(source, NTM) and isinstance(target, NTM)):
        raise ValueError("init_from needs two NTMs or two LSTM baselines (a checkpoint of the run's model kind)")
    if (source.config.read_heads, source.config.controller) != (target.config.read_heads, target.config.controller):
        raise ValueError("init_from cannot change the read heads or the controller kind")
    if target.config.controller_size < source.config.controller_size:
        raise ValueError("init_from cannot narrow the controller: "
                         f"{source.config.controller_size} -> {target.config.controller_size} units")
    src_layouts, dst_layouts = layouts(source.config), layouts(target.config)
    source_state = source.state_dict()
    for name, dst in target.state_dict().items():
        if name not in source_state and ".skip." in name:
            continue  # an input skip the source has not (heads_see_input): stays zero, the source's behaviour
        if name not in source_state and name.startswith("input_layer."):
            continue  # an input layer the source has not: fresh, its features read by nothing at first
        if name in ("read_w0", "write_w0") or (name == "memory0" and target.config.memory_init == "constant"):
            continue  # buffers the config defines (heads on row 0, memory_init_value), not trained weights
        _copy_one(name, source_state[name], dst, src_layouts, dst_layouts)


def _copy_all(source_state: dict[str, Tensor], target_state: dict[str, Tensor],
              src_layouts: dict[str, tuple[Layout, ...]], dst_layouts: dict[str, tuple[Layout, ...]]) -> None:
    """Every target parameter from the source's of the same name (the two must have the same names)."""
    if source_state.keys() != target_state.keys():
        raise ValueError("cannot transplant between models of different structure "
                         f"({sorted(source_state.keys() ^ target_state.keys())[:4]} differ)")
    for name, dst in target_state.items():
        _copy_one(name, source_state[name], dst, src_layouts, dst_layouts)


def _copy_one(name: str, src: Tensor, dst: Tensor, src_layouts: dict[str, tuple[Layout, ...]],
              dst_layouts: dict[str, tuple[Layout, ...]]) -> None:
    """One parameter: copied when the shapes agree, else remapped by its layouts."""
    if src.shape == dst.shape:
        dst.copy_(src)
    elif name in dst_layouts and name in src_layouts:
        dst.copy_(remap(src, dst, src_layouts[name], dst_layouts[name]))
    else:
        raise ValueError(f"cannot transplant {name}: {tuple(src.shape)} -> {tuple(dst.shape)}")
