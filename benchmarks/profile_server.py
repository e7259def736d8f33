"""Where the server's CPU goes under load: `python -m benchmarks.profile_server [--cell 64x20] [--seconds 5]`.

Starts the real server pinned to the second core (the load generator on the first, as benchmarks.overhead
does), drives one load cell, and samples the server twice: with `perf` (cpu-clock, every thread, native
code: the split between onnxruntime, the interpreter, the kernel, gRPC's core, numpy) and with `py-spy`
(`--gil`: the Python function holding the GIL, by thread). Prints both as tables; the raw samples stay in
--out. Either tool may be missing (perf is a system package, py-spy a pip one): its table then says so.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from benchmarks.loadgen import LoadSpec, run_load
from benchmarks.models import ModelFolder, find_model, single_model_dir
from benchmarks.report import Table
from benchmarks.server import pin_here, split_cores, start_server


def perf_shares(data: Path) -> list[tuple[str, float]]:
    """(shared object, share of samples) from a `perf record` file, largest first."""
    out = subprocess.run(["perf", "report", "-i", str(data), "--sort", "dso", "--stdio"], capture_output=True,
                         text=True, check=True).stdout
    rows = []
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].endswith("%") and not line.startswith("#"):
            rows.append((parts[1], float(parts[0].rstrip("%")) / 100))
    return rows


def pyspy_shares(raw: Path, top: int) -> list[tuple[str, str, float]]:
    """(thread, function, share of GIL-holding samples) from py-spy's raw (collapsed) output, by own time."""
    own: collections.Counter[tuple[str, str]] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        thread = frames[0].split(":")[-1].strip()
        own[(thread, frames[-1])] += int(count)
        total += int(count)
    return [(thread, frame, n / total) for (thread, frame), n in own.most_common(top)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile_server", description=__doc__.splitlines()[0])
    parser.add_argument("--cell", default="64x20", help="SESSIONSxSTEPS per message")
    parser.add_argument("--seconds", type=float, default=5.0, help="sampling time per tool")
    parser.add_argument("--top", type=int, default=25, help="Python functions listed")
    parser.add_argument("--packed", action="store_true",
                        help="one StreamPackedSteps message per tick carries every session (benchmarks.overhead's "
                             "PACKED rows)")
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--models-dir", type=Path, default=Path("models"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/profile"))
    args = parser.parse_args(argv)
    sessions, steps = (int(v) for v in args.cell.split("x"))
    model = find_model(args.models_dir, args.model)
    split = split_cores()
    original = os.sched_getaffinity(0)
    try:
        return _profile(args, model, sessions, steps, split)
    finally:
        pin_here(original)  # a caller in this process (a test) gets its cores back


def _profile(args: argparse.Namespace, model: ModelFolder, sessions: int, steps: int,
             split: tuple[set[int], set[int]] | None) -> int:
    client_cores, server_cores = split if split else (None, None)
    pin_here(client_cores)
    args.out.mkdir(parents=True, exist_ok=True)
    pyspy = str(Path(sys.executable).with_name("py-spy"))  # the dev extra installs it next to this interpreter
    tools = {"perf": (["perf", "record", "-q", "-e", "cpu-clock", "-F", "2000", "-o", str(args.out / "perf.data"),
                       "-p", "{pid}", "--", "sleep", str(args.seconds)], shutil.which("perf") is not None),
             "py-spy": ([pyspy, "record", "--gil", "--nonblocking", "--threads", "-r", "250", "-f", "raw",
                         "-d", str(int(args.seconds)), "-o", str(args.out / "pyspy.txt"), "-p", "{pid}"],
                        Path(pyspy).is_file())}
    server = start_server(single_model_dir(model), ("--max-batch", "256"), cores=server_cores)
    try:
        def sample() -> None:
            time.sleep(1.0)  # past the load generator's warm-up
            for command, present in tools.values():
                if present:
                    subprocess.run([c.format(pid=server.pid) for c in command], check=False,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        sampler = threading.Thread(target=sample)
        sampler.start()
        spec = LoadSpec(sessions, steps, 0.5, 2 * args.seconds + 2.0, 10**7, packed=args.packed)
        result = run_load(server.target, model.path.name, model.config["input_size"], spec)
        sampler.join()
    finally:
        server.stop()
    where = f"server on cores {sorted(server_cores)}, load on {sorted(client_cores)}" if split else "not pinned"
    print(f"# Server profile: {sessions} sessions x {steps} steps/message{', packed' if args.packed else ''}, "
          f"{result.steps_per_s:,.0f} session-steps/s ({where})\n")
    native = Table("Server CPU by shared object (perf, cpu-clock samples of every thread)", ["object", "share"])
    if tools["perf"][1] and (args.out / "perf.data").is_file():
        for name, share in perf_shares(args.out / "perf.data")[:12]:
            native.add(name, f"{share:.1%}")
    else:
        native.notes = ["perf is not installed: no native profile"]
    python = Table("Python functions holding the GIL (py-spy --gil, own time)", ["thread", "function", "share"])
    if not tools["py-spy"][1]:
        python.notes = ["py-spy is not installed (pip install py-spy): no Python profile"]
    elif not (args.out / "pyspy.txt").is_file():
        python.notes = ["py-spy took no samples: it may not attach here (ptrace restricted; run as the server's "
                        "user with CAP_SYS_PTRACE or kernel.yama.ptrace_scope=0)"]
    else:
        for thread, frame, share in pyspy_shares(args.out / "pyspy.txt", args.top):
            python.add(thread, frame, f"{share:.1%}")
    for table in (native, python):
        print(table.markdown())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
