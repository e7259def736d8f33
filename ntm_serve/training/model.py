"""The Neural Turing Machine and the LSTM baseline.

`NTM.step` is the unit everything else is built on: a pure function of (parameters, input,
state) -> (logits, next state). Training loops it over time; export traces exactly it.
Each step writes first, then reads (the read sees this step's write).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ntm_serve.training import addressing, lru, memory
from ntm_serve.training.config import NTMConfig
from ntm_serve.training.controller import make_controller
from ntm_serve.training.heads import HeadProjection
from ntm_serve.training.state import NTMState


class NTM(nn.Module):
    def __init__(self, config: NTMConfig) -> None:
        super().__init__()
        self.config = c = config
        self.input_layer = nn.Linear(c.input_size, c.input_layer) if c.input_layer else None
        self.controller = make_controller(
            c.controller, c.features + c.read_heads * c.memory_width, c.controller_size
        )
        skip = c.features if c.heads_see_input else 0
        self.read_proj = HeadProjection(c.controller_size, c.read_heads, c.memory_width, c.shift_range, write=False,
                                        input_size=skip)
        self.write_proj = HeadProjection(c.controller_size, c.write_heads, c.memory_width, c.shift_range, write=True,
                                         input_size=skip, exact_gate=c.heads == "lru")
        self.output = nn.Linear(c.controller_size + c.read_heads * c.memory_width, c.output_size)

        # Initial state: part of the model, so a session can start from the model alone.
        self.h0 = nn.Parameter(torch.randn(c.controller_size) * 0.05)  # (H,)
        self.c0 = nn.Parameter(torch.randn(c.controller_size) * 0.05)  # (H,)
        self.r0 = nn.Parameter(torch.randn(c.read_heads, c.memory_width) * 0.01)  # (R, M)
        memory0 = torch.full((c.memory_rows, c.memory_columns), c.memory_init_value)  # (N, M[+1 usage])
        if c.memory_init == "learned":
            self.memory0 = nn.Parameter(memory0)
        else:
            self.register_buffer("memory0", memory0)
        one_hot = torch.zeros(c.memory_rows)
        one_hot[0] = 1.0  # heads start focused on row 0: location addressing has a place to start
        self.register_buffer("read_w0", one_hot.expand(c.read_heads, -1).clone())  # (R, N)
        self.register_buffer("write_w0", one_hot.expand(c.write_heads, -1).clone())  # (W, N)

    def initial_state(self, batch_size: int, rows: int | None = None) -> NTMState:
        """The state a new sequence starts from, broadcast to the batch, with `rows` memory rows (None: the trained
        N). Every row of a constant memory holds the same value and the heads start on row 0, so any N in
        `config.rows_range` starts the same way; a learned memory exists at its trained N only."""
        b, n = batch_size, self.config.memory_rows if rows is None else rows
        if n == self.config.memory_rows:
            memory, read_w, write_w = self.memory0, self.read_w0, self.write_w0  # (N, M), (R, N), (W, N)
        else:
            low, high = self.config.rows_range
            if not low <= n <= high:
                raise ValueError(f"memory rows {n} outside this model's range [{low}, {high}]")
            memory = self.memory0[:1].expand(n, -1)  # (N, M): the constant row
            one_hot = torch.zeros(n, dtype=self.read_w0.dtype, device=self.read_w0.device)
            one_hot[0] = 1.0
            read_w = one_hot.expand(self.config.read_heads, -1)  # (R, N)
            write_w = one_hot.expand(self.config.write_heads, -1)  # (W, N)
        return NTMState(
            controller_h=self.h0.expand(b, -1),  # (B, H)
            controller_c=self.c0.expand(b, -1),  # (B, H)
            read_vectors=self.r0.expand(b, -1, -1),  # (B, R, M)
            memory=memory.expand(b, -1, -1),  # (B, N, M)
            read_weights=read_w.expand(b, -1, -1),  # (B, R, N)
            write_weights=write_w.expand(b, -1, -1),  # (B, W, N)
        )

    def step(self, x: Tensor, state: NTMState) -> tuple[Tensor, NTMState]:
        """One time step. x (B, I), state -> logits (B, O) clipped to +-logit_clip, next state."""
        batch = x.shape[0]
        x = self._features(x)  # (B, F)
        controller_in = torch.cat([x, state.read_vectors.reshape(batch, -1)], dim=-1)  # (B, F + R*M)
        h, c = self.controller(controller_in, state.controller_h, state.controller_c)  # (B, H)
        if self.config.heads == "lru":
            return self._lru_step(x, h, c, state)

        w = self.write_proj(h, x)
        write_weights = addressing.address(
            state.memory, state.write_weights, w.key, w.beta, w.gate, w.shift, w.gamma
        )  # (B, W, N)
        new_memory = memory.write(state.memory, write_weights, w.erase, w.add)  # (B, N, M)

        r = self.read_proj(h, x)
        read_weights = addressing.address(
            new_memory, state.read_weights, r.key, r.beta, r.gate, r.shift, r.gamma
        )  # (B, R, N)
        read_vectors = memory.read(new_memory, read_weights)  # (B, R, M)

        return self._output(h, read_vectors), NTMState(h, c, read_vectors, new_memory, read_weights, write_weights)

    def _features(self, x: Tensor) -> Tensor:
        """What the controller and the heads' skip see of a step's input: x, then the input layer's features.
        x (B, I) -> (B, I + input_layer)"""
        if self.input_layer is None:
            return x
        return torch.cat([x, torch.relu(self.input_layer(x))], dim=-1)

    def _output(self, h: Tensor, read_vectors: Tensor) -> Tensor:
        """Clipped logits from the controller output and this step's reads. -> (B, O)"""
        logits = self.output(torch.cat([h, read_vectors.reshape(h.shape[0], -1)], dim=-1))  # (B, O)
        return torch.clamp(logits, -self.config.logit_clip, self.config.logit_clip)

    def _lru_step(self, x: Tensor, h: Tensor, c: Tensor, state: NTMState) -> tuple[Tensor, NTMState]:
        """The rest of a step with least-recently-used access: the write gate picks last step's read rows or the
        least-used row (erased first); reads are content-based. Usage is the memory's last column."""
        m = self.config.memory_width
        old, old_usage = state.memory[..., :m], state.memory[..., m]  # (B, N, M), (B, N)
        least = lru.least_used(old_usage, self.config.write_rows)  # (B, N)
        w = self.write_proj(h, x)
        write_weights = lru.write_weights(state.read_weights, least, w.gate)  # (B, W, N)
        if self.config.write_follows:
            write_weights = lru.follow_first(write_weights, state.write_weights)  # (B, W, N)
        new_memory = lru.erase_least_used(old, least) + write_weights.transpose(1, 2) @ w.add  # (B, N, M)
        r = self.read_proj(h, x)
        skip = least if self.config.read_skips_new else None  # the rows renewed this step
        read_weights = addressing.content_weighting(new_memory, r.key, r.beta, skip)  # (B, R, N)
        read_vectors = memory.read(new_memory, read_weights)  # (B, R, M)
        new_usage = lru.usage(old_usage, read_weights, write_weights, self.config.usage_decay)  # (B, N)
        full = torch.cat([new_memory, new_usage.unsqueeze(-1)], dim=-1)  # (B, N, M + 1)
        return self._output(h, read_vectors), NTMState(h, c, read_vectors, full, read_weights, write_weights)

    def forward(self, inputs: Tensor, state: NTMState | None = None, rows: int | None = None
                ) -> tuple[Tensor, NTMState, Tensor, Tensor]:
        """Run a whole sequence, from `state` or else the initial state with `rows` memory rows (None: the trained
        N). inputs (T, B, I) -> logits (T, B, O), final state, read weights (T, B, R, N), write weights (T, B, W, N)."""
        if state is None:
            state = self.initial_state(inputs.shape[1], rows)
        logits, reads, writes = [], [], []
        for x in inputs:
            y, state = self.step(x, state)
            logits.append(y)
            reads.append(state.read_weights)
            writes.append(state.write_weights)
        return torch.stack(logits), state, torch.stack(reads), torch.stack(writes)


class LSTMBaseline(nn.Module):
    """An LSTM with no external memory, same interface as NTM.forward, for the comparison report."""

    def __init__(self, input_size: int, output_size: int, hidden_size: int = 256, layers: int = 3,
                 logit_clip: float = 20.0) -> None:
        super().__init__()
        self.lstm = nn.LSTM(input_size, hidden_size, num_layers=layers)
        self.output = nn.Linear(hidden_size, output_size)
        self.logit_clip = logit_clip

    def forward(self, inputs: Tensor, state: object = None) -> tuple[Tensor, None, None, None]:
        """inputs (T, B, I) -> logits (T, B, O)."""
        hidden, _ = self.lstm(inputs)  # (T, B, hidden)
        logits = torch.clamp(self.output(hidden), -self.logit_clip, self.logit_clip)
        return logits, None, None, None
