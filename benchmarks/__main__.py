"""`python -m benchmarks [--quick] [--only engine,shapes,service,memory,gpu] [--out DIR]`.

Full mode measures the figures of docs/performance.md (minutes); quick mode runs every benchmark
with tiny counts, to check the scripts work. Each benchmark prints markdown tables and writes
`<name>.json` and `<name>.md` into the output folder.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import machine
from benchmarks.models import find_model

BENCHMARKS = ("engine", "shapes", "service", "memory", "gpu")


def _names(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown benchmark(s) {unknown}; choose from {', '.join(BENCHMARKS)}")
    return names


def _batches(text: str) -> tuple[int, ...]:
    return tuple(int(b) for b in text.split(",") if b.strip())


def write_summary(out: Path, names: tuple[str, ...], info: dict, model: dict, quick: bool) -> None:
    """All tables of this run's benchmarks in one markdown file, headed by the machine and the model."""
    parts = [f"# Benchmark results ({'quick' if quick else 'full'} mode, {time.strftime('%Y-%m-%d %H:%M %Z')})\n",
             f"Machine: {info['cpu']}, {info['cores']} cores, GPU: {info['gpu'] or 'none'}; "
             f"onnxruntime {info['versions'].get('onnxruntime-gpu') or info['versions'].get('onnxruntime')}, "
             f"torch {info['versions'].get('torch')}. Model: {model['path']} ({model['source']}, task "
             f"{model['task']}).\n"]
    parts += [(out / f"{name}.md").read_text() for name in names if (out / f"{name}.md").is_file()]
    # A subset run (--only) keeps the other benchmarks' files: list them too, marked as older.
    kept = [name for name in BENCHMARKS if name not in names and (out / f"{name}.md").is_file()]
    if kept:
        parts.append(f"## Kept from an earlier run (not re-run this time: {', '.join(kept)}; see each JSON for "
                     "its date, machine and load)\n")
        parts += [(out / f"{name}.md").read_text() for name in kept]
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.md").write_text("\n".join(parts))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny counts: checks the scripts, not the figures")
    parser.add_argument("--only", type=_names, default=BENCHMARKS,
                        help=f"comma-separated subset of {','.join(BENCHMARKS)} (default: all)")
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default benchmarks/results; with --quick, a folder under the system temp "
                             "dir, so smoke runs never overwrite the figures)")
    parser.add_argument("--model", type=Path, default=None,
                        help="model folder with step/sequence/initial_state.onnx (default: models/copy, else "
                             "the first shipped model, else an untrained dev export)")
    parser.add_argument("--models-dir", type=Path, default=Path("models"))
    parser.add_argument("--batches", type=_batches, default=None, help="engine batch sizes, e.g. 1,64")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile in the engine benchmark")
    parser.add_argument("--gpu-device", choices=("cuda", "cpu"), default="cuda",
                        help="cpu: dry-run the GPU benchmark's code on the CPU provider (checks the script only)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    out = args.out or (Path(tempfile.gettempdir()) / "ntm-bench-quick" if args.quick else Path("benchmarks/results"))

    model = find_model(args.models_dir, args.model)
    print(f"# Benchmarks ({'quick' if args.quick else 'full'} mode)\n")
    info = machine.describe()
    print(f"machine: {info['cpu']}, {info['cores']} cores, GPU: {info['gpu'] or 'none'}; "
          f"model: {model.path} ({model.source}); load average {machine.load_average()}\n")
    failed = []
    for name in args.only:
        try:
            if name == "engine":
                from benchmarks import engine

                engine.run(model, out, args.quick, args.batches, False if args.no_compile else None)
            elif name == "shapes":
                from benchmarks import shapes

                shapes.run(model, out, args.quick)
            elif name == "service":
                from benchmarks import service_bench

                service_bench.run(model, out, args.quick)
            elif name == "memory":
                from benchmarks import memory_bench

                memory_bench.run(model, out, args.quick)
            elif name == "gpu":
                from benchmarks import gpu

                gpu.run(model, out, args.quick, args.gpu_device)
        except Exception:
            logging.getLogger("benchmarks").exception("benchmark %s failed", name)
            failed.append(name)
    write_summary(out, args.only, info, model.describe(), args.quick)
    print(f"results in {out}/ (summary.md: every table)")
    if failed:
        print(f"FAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
