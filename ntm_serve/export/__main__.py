"""`python -m ntm_serve.export FOLDER [FOLDER...]`: write step.onnx, sequence.onnx and initial_state.onnx into each
folder."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ntm_serve.export.exporter import export_folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ntm_serve.export",
        description="Export NTM checkpoints (FOLDER/checkpoint.pt) to the ONNX graphs of docs/onnx-contract.md.",
    )
    parser.add_argument("folders", nargs="+", type=Path, metavar="FOLDER",
                        help="a trained model's folder (holds checkpoint.pt; the graphs are written beside it)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    failed = 0
    for folder in args.folders:
        try:
            paths = export_folder(folder)
        except (OSError, ValueError, RuntimeError) as err:
            logging.getLogger("export").error("%s: %s", folder, err)
            failed += 1
            continue
        for path in paths.values():
            print(f"{path}  ({path.stat().st_size} bytes)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
