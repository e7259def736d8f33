"""Memory benchmark: what a live session costs the server, and its resident memory with 10,000 idle sessions.

The server's RSS (/proc/<pid>/status) is read after start-up, then after each batch of CreateSession
calls; bytes per session is the slope. The float32 size of one session's state (from the model's
sizes) is the floor any design must pay; the rest is bookkeeping and allocator slack.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from pathlib import Path
from typing import Any

import grpc

from benchmarks import machine
from benchmarks.models import ModelFolder, single_model_dir
from benchmarks.procstat import rss_bytes
from benchmarks.report import Table, write_result
from benchmarks.server import ServerProcess, running_server
from ntm_serve.api.proto_gen.ntm.v1 import ntm_pb2, ntm_pb2_grpc

log = logging.getLogger(__name__)

CONCURRENCY = 32  # CreateSession calls in flight


async def _create(target: str, model: str, count: int) -> list[str]:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = ntm_pb2_grpc.NTMStub(channel)
        ids: list[str] = []
        semaphore = asyncio.Semaphore(CONCURRENCY)

        async def one() -> None:
            async with semaphore:
                session = await stub.CreateSession(ntm_pb2.CreateSessionRequest(model=model, ttl_seconds=3600))
                ids.append(session.session_id)

        await asyncio.gather(*(one() for _ in range(count)))
        return ids


async def _delete(target: str, ids: list[str]) -> None:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = ntm_pb2_grpc.NTMStub(channel)
        semaphore = asyncio.Semaphore(CONCURRENCY)

        async def one(sid: str) -> None:
            async with semaphore:
                await stub.DeleteSession(ntm_pb2.DeleteSessionRequest(session_id=sid))

        await asyncio.gather(*(one(s) for s in ids))


def _settled_rss(server: ServerProcess) -> int:
    time.sleep(0.5)  # let the server finish answering and the allocator settle
    return rss_bytes(server.pid)


def measure_sessions(server: ServerProcess, model: str, checkpoints: tuple[int, ...]) -> dict[str, Any]:
    """RSS after start-up and at each session count in `checkpoints` (cumulative), then after deleting all."""
    rss = {0: _settled_rss(server)}
    ids: list[str] = []
    started = time.perf_counter()
    for total in checkpoints:
        ids += asyncio.run(_create(server.target, model, total - len(ids)))
        rss[total] = _settled_rss(server)
        log.info("memory: %d sessions, RSS %.1f MiB", total, rss[total] / 2**20)
    create_s = time.perf_counter() - started
    asyncio.run(_delete(server.target, ids))
    gc.collect()
    after_delete = _settled_rss(server)
    last = checkpoints[-1]
    return {"rss_bytes": {str(k): v for k, v in rss.items()}, "sessions": last,
            "bytes_per_session": (rss[last] - rss[0]) / last, "create_s": create_s,
            "creates_per_s": last / create_s, "rss_after_delete_bytes": after_delete}


def run(model: ModelFolder, out_dir: Path, quick: bool) -> dict[str, Any]:
    checkpoints = (100, 500) if quick else (1000, 2500, 5000, 10_000)
    models_dir = single_model_dir(model)
    load_before = machine.load_average()
    with running_server(models_dir, ["--max-sessions", str(checkpoints[-1] + 50)]) as server:
        found = measure_sessions(server, model.path.name, checkpoints)
    load_after = machine.load_average()
    state = model.state_bytes
    table = Table("Memory: server resident set size (RSS) against idle sessions",
                  ["idle sessions", "server RSS (MiB)", "RSS growth per session (bytes)"])
    rss = {int(k): v for k, v in found["rss_bytes"].items()}
    for count, value in rss.items():
        per = f"{(value - rss[0]) / count:,.0f}" if count else "—"
        table.add(f"{count:,}", f"{value / 2**20:.1f}", per)
    table.add("after deleting all", f"{found['rss_after_delete_bytes'] / 2**20:.1f}", "—")
    ratio = found["bytes_per_session"] / state
    table.notes = [
        f"one session's state is {state:,} bytes of float32 (controller h and c, read vectors, the "
        f"{model.config['memory_rows']}×{model.config['memory_width']} memory, read and write weightings); "
        f"measured {found['bytes_per_session']:,.0f} bytes of RSS per session = {ratio:.2f}× the state",
        f"sessions created at {found['creates_per_s']:,.0f} per second ({CONCURRENCY} CreateSession calls in flight)",
        machine.load_note(load_before, load_after),
    ]
    print(table.markdown())
    payload = {"benchmark": "memory", "mode": "quick" if quick else "full", "machine": machine.describe(),
               "load_before": load_before, "load_after": load_after, "model": model.describe(),
               "state_bytes_per_session": state, **found, "rss_over_state": ratio}
    write_result(out_dir, "memory", payload, [table])
    return payload
