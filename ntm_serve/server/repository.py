"""The layout of the models directory: which folders are which model versions (pure, apart from reading it).

    models/<name>/step.onnx, ...        a flat model folder: version 1 of <name> (the original layout)
    models/<name>/<version>/step.onnx   version <version> (a positive integer) of <name> (Triton's layout)

Both may be mixed, also within one name (a flat folder plus `2/` serves versions 1 and 2); when a `1/`
folder sits beside flat graphs, `1/` is version 1 and the flat graphs are ignored (logged). Folders whose
names start with a dot are never versions (stage a new version as `models/<name>/.tmp-2/` and rename it
into place, so the poller never sees it half written). A name folder with neither graphs nor integer
subfolders (e.g. an LSTM baseline without ONNX) is not a model. An integer subfolder is a version even
when its graphs are missing: it is refused with the reason.

A `Fingerprint` (graph file names, sizes and modification times) tells the poller that a folder changed
since it last looked, without reading the graphs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from ntm_serve.runtime.engine import GRAPH_FILES

log = logging.getLogger(__name__)

FLAT_VERSION = 1

Fingerprint = tuple[tuple[str, int, int], ...]  # (file, size, mtime_ns) of each graph present


@dataclass(frozen=True)
class VersionFolder:
    name: str
    version: int
    path: Path
    fingerprint: Fingerprint

    @property
    def label(self) -> str:
        return f"{self.name} version {self.version}"


def fingerprint(folder: Path) -> Fingerprint:
    found = []
    for file in sorted(GRAPH_FILES.values()):
        try:
            stat = (folder / file).stat()
        except OSError:
            continue
        found.append((file, stat.st_size, stat.st_mtime_ns))
    return tuple(found)


def version_number(text: str) -> int | None:
    """'3' -> 3; anything but a positive decimal integer (also '03', '+3', '.tmp-3') -> None."""
    if not text.isdecimal() or not text.isascii() or text != str(int(text)) or int(text) < 1:
        return None
    return int(text)


def _versions_of(folder: Path) -> list[VersionFolder]:
    numbered = {}
    for sub in folder.iterdir():
        number = version_number(sub.name)
        if number is not None and sub.is_dir():
            numbered[number] = sub
    if (folder / GRAPH_FILES["step"]).is_file():
        if FLAT_VERSION in numbered:
            log.warning("flat graphs ignored: a version folder 1/ is version 1",
                        extra={"model": folder.name, "folder": str(folder)})
        else:
            numbered[FLAT_VERSION] = folder
    return [VersionFolder(folder.name, v, path, fingerprint(path)) for v, path in sorted(numbered.items())]


def scan(root: Path) -> list[VersionFolder]:
    """Every model version folder under `root`, by name then version."""
    found: list[VersionFolder] = []
    for folder in sorted(root.iterdir()):
        if folder.is_dir() and not folder.name.startswith("."):
            try:
                found.extend(_versions_of(folder))
            except OSError as err:  # a folder removed while we looked: it is simply not there
                log.warning("cannot read model folder", extra={"folder": str(folder), "error": str(err)})
    return found
