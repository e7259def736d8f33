"""The inspector page's picture in docs: a server over the shipped models, the try-it panel running a copy example,
caught mid-copy (the outputs half written) by headless Chromium.

    .venv/bin/python -m tests.ui.inspector_screenshot docs/inspector.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ntm_serve.server.server import ServerThread
from tests.helpers import ROOT, service_config
from tests.ui.browser import chromium, missing

COPY_LENGTH = 12  # the try-it copy example: 12 vectors, a delimiter, 12 blank steps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the PNG to write")
    parser.add_argument("--models", type=Path, default=ROOT / "models")
    parser.add_argument("--at-step", type=int, default=COPY_LENGTH + 1 + COPY_LENGTH // 2,
                        help="the step to catch (default: half the copy written out)")
    args = parser.parse_args(argv)
    if missing():
        print(missing(), file=sys.stderr)
        return 2
    config = service_config(args.models, ui_port=0, metrics_port=-1)
    with ServerThread(config) as server, chromium(1400, 980) as browser:
        page = browser.new_page()
        page.goto(f"http://127.0.0.1:{server.server.ui_port}/")
        page.wait_for_selector("#try-model option[value='copy']", state="attached")
        page.select_option("#try-model", "copy")
        page.fill("#try-delay", "400")
        page.fill("#try-seed", "3")
        page.click("#try-run")
        page.wait_for_function(f"window.inspector.steps >= {args.at_step} && window.inspector.drawn > 0",
                               timeout=60_000)
        page.wait_for_timeout(100)  # the frame's drawing
        page.screenshot(path=str(args.out), full_page=True)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
