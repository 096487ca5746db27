"""The layout's two rules (docs/architecture.md): the runtime is torch-free, and the packages import without cycles."""
from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "medsamlite"
HEAVY = ("torch", "torchvision", "timm", "peft", "monai", "scipy", "accelerate", "nncf", "matplotlib")


def test_every_runtime_module_imports_with_the_torch_side_blocked():
    script = textwrap.dedent(f"""
        import importlib, pkgutil, sys

        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {HEAVY!r}:
                    raise ImportError(f"blocked: {{name}}")
                return None

        sys.meta_path.insert(0, Block())
        import medsamlite.runtime as runtime
        names = [m.name for m in pkgutil.walk_packages(runtime.__path__, "medsamlite.runtime.")]
        for name in names:
            if name.endswith("onnxruntime"):
                importlib.util.find_spec("onnxruntime") and importlib.import_module(name)
            else:
                importlib.import_module(name)
        print(len(names), sorted(m for m in sys.modules if m.startswith("medsamlite.") and
                                 not m.startswith(("medsamlite.runtime", "medsamlite.config", "medsamlite.constants",
                                                   "medsamlite.registry", "medsamlite.zoo", "medsamlite._lazy",
                                                   "medsamlite.extras"))))
    """)
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    count, outside = out.stdout.split(" ", 1)
    assert int(count) >= 10 and outside.strip() == "[]", f"the runtime imported {outside.strip()}"


def _imports(path: Path, module: str) -> set[str]:
    """Every medsamlite module `module` imports, at module level or inside functions."""
    tree = ast.parse(path.read_text())
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("medsamlite")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("medsamlite"):
                found.add(target)
                found |= {f"{target}.{a.name}" for a in node.names}  # `from . import x` imports module x
    return found


def _unit(module: str) -> str:
    """The node of the package graph: a top-level module or a subpackage of medsamlite."""
    parts = module.split(".")
    return ".".join(parts[:2])


def package_graph() -> dict[str, set[str]]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(REPO).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        if module == "medsamlite":
            continue  # the public facade: its lazy names point at every part by design
        edges = {_unit(t) for t in _imports(path, module) if t in modules}
        graph.setdefault(_unit(module), set()).update(e for e in edges if e not in (_unit(module), "medsamlite"))
    return graph


def test_the_package_import_graph_has_no_cycle():
    graph = package_graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_the_runtime_imports_nothing_from_the_torch_side():
    allowed = {"medsamlite.runtime", "medsamlite.config", "medsamlite.constants", "medsamlite.extras", "medsamlite._lazy"}
    assert package_graph()["medsamlite.runtime"] <= allowed
