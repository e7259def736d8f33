"""The package's shape: who may import whom, no import circles, no private names across modules, and a client
that installs alone (its base dependencies are what a client application needs, and importing it pulls in nothing
heavier)."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from helpers import ROOT

PACKAGE = ROOT / "ntm_serve"

# What each part may import from the project (itself always). Upward imports are the ones not listed.
ALLOWED: dict[str, set[str]] = {
    "contract": set(),
    "api": {"contract"},
    "client": {"api", "contract"},
    "runtime": {"contract"},
    "server": {"api", "contract", "runtime"},
    "cluster": {"api", "contract", "server"},
    "plots": set(),
    "data": set(),
    "demos": {"api", "client", "contract", "data", "plots"},
    "training": {"contract", "data", "plots"},
    "export": {"contract", "runtime", "training"},
    "ui": {"api", "client", "contract", "demos", "server"},  # the inspector page: watches sessions, runs the demos
}
# The one import against the layers: the server starts the optional inspector page (--ui-port) it serves.
PLUG_INS = {("ntm_serve.server.server", "ntm_serve.ui")}
# Third-party packages a part must never import (the server runs without them; the client installs alone).
FORBIDDEN: dict[str, set[str]] = {
    "data": {"onnxruntime", "torch", "sklearn", "matplotlib", "redis", "prometheus_client"},
    "api": {"onnxruntime", "torch", "sklearn", "matplotlib", "redis", "prometheus_client"},
    "client": {"onnxruntime", "torch", "sklearn", "matplotlib", "redis", "prometheus_client"},
    "server": {"torch", "sklearn", "matplotlib", "onnx"},
    "runtime": {"torch", "sklearn", "matplotlib"},
}


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        if "proto_gen" in path.parts:
            continue
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _imports(path: Path, module: str) -> list[tuple[str, list[str]]]:
    """(imported module, names) for every import in the file, function-local ones included."""
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            out.append((base, [alias.name for alias in node.names]))
    return out


def _part(module: str) -> str:
    return module.split(".")[1] if module.count(".") else ""


def _project_edges() -> dict[str, set[str]]:
    modules = _modules()
    edges: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        for target, names in _imports(path, module):
            if not target.startswith("ntm_serve"):
                continue
            subs = [f"{target}.{n}" for n in names if f"{target}.{n}" in modules]
            edges[module] |= set(subs) if subs else ({target} if target in modules else set())
    return edges


def test_no_part_imports_upward() -> None:
    wrong = []
    for module, targets in _project_edges().items():
        part = _part(module)
        for target in targets:
            other = _part(target)
            if other and other != part and other not in ALLOWED[part] and (module, target) not in PLUG_INS:
                wrong.append(f"{module} -> {target}")
    assert not wrong, wrong


def test_no_forbidden_third_party_imports() -> None:
    wrong = []
    for module, path in _modules().items():
        banned = FORBIDDEN.get(_part(module), set())
        for target, _ in _imports(path, module):
            if target.split(".")[0] in banned:
                wrong.append(f"{module} imports {target}")
    assert not wrong, wrong


def test_no_import_circles() -> None:
    edges = _project_edges()
    # A package's __init__ that re-exports its own modules is not a circle of behaviour: drop edges to ancestors.
    graph = {m: {t for t in ts if not m.startswith(t + ".")} for m, ts in edges.items()}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in graph.get(node, ()):
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt):], nxt])
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, cycles


def test_no_private_names_across_modules() -> None:
    wrong = []
    for root in (PACKAGE, ROOT / "benchmarks", ROOT / "tests"):
        for path in root.rglob("*.py"):
            if "proto_gen" in path.parts:
                continue
            for target, names in _imports(path, ""):
                if target.startswith(("ntm_serve", "benchmarks", "tests", "helpers")):
                    wrong += [f"{path.relative_to(ROOT)}: {target}.{n}" for n in names
                              if n.startswith("_") and not n.startswith("__")]
    assert not wrong, wrong


def test_the_base_install_is_a_client() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    base = {dep.split("=")[0].split(">")[0].split("<")[0].split("[")[0].strip() for dep in project["dependencies"]}
    assert base == {"numpy", "grpcio", "protobuf", "googleapis-common-protos"}, base
    extras = project["optional-dependencies"]
    assert {"server", "replica", "cluster", "demo", "train", "export", "dev"} <= set(extras)
    assert any(dep.startswith("onnxruntime") for dep in extras["server"])


@pytest.mark.parametrize("module", ["ntm_serve.client", "ntm_serve.client.admin"])
def test_the_client_imports_nothing_heavier(module: str) -> None:
    """Importing the SDK with the server's and the demos' packages made unimportable still works."""
    blocker = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in {'onnxruntime', 'torch', 'sklearn', 'matplotlib', 'redis', "
        "'prometheus_client', 'grpc_health', 'grpc_reflection'}:\n"
        "            raise ImportError(f'the client must not import {name}')\n"
        "sys.meta_path.insert(0, Block())\n"
        f"import {module}\n"
    )
    result = subprocess.run([sys.executable, "-c", blocker], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_console_scripts_point_at_real_functions() -> None:
    import importlib

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert {"ntm-serve", "ntm-demo", "ntm-train", "ntm-export", "ntm-cluster", "ntm-admin"} <= set(scripts)
    for target in scripts.values():
        module, function = target.split(":")
        assert callable(getattr(importlib.import_module(module), function)), target
