"""The package's imports go one way (DEVELOPERS.md, "Layering"): no import circle among tocom's modules, no
module importing a higher layer, no engine importing another engine (what they share lives in
engine/common.py), no module importing another module's private name. Read from the source with `ast`, so
imports inside functions count as much as those at the top."""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "tocom"

#: Layers, lowest first: a module imports its own unit (tocom/<unit>.py or tocom/<unit>/) and lower ranks only.
RANK = {"errors": 0, "gpus": 0.5, "tocom": 1, "io": 1, "settings": 1, "adapters": 1, "layout": 2, "lineage": 2,
        "compress": 2, "models": 2, "plugin": 3, "segment": 3, "data": 3, "engine": 4, "search": 4, "experiments": 5, "cli": 6}
ENGINE_SHARED = "tocom.engine.common"


def modules() -> dict[str, tuple[Path, bool]]:
    """{dotted name: (file, is a package)} of every module of the package."""
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_pkg else parts)] = (path, is_pkg)
    return out


def imports(mods: dict) -> list[tuple[str, str, str]]:
    """(importer, imported module, imported name or '') for every tocom import in the package."""
    out = []
    for name, (path, is_pkg) in mods.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                out += [(name, a.name, "") for a in node.names if a.name.split(".")[0] == "tocom"]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name.split(".")[:len(name.split(".")) + is_pkg - node.level]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                if target.split(".")[0] == "tocom":
                    for a in node.names:     # `from pkg import submodule` imports the submodule
                        sub = f"{target}.{a.name}"
                        out.append((name, sub, "") if sub in mods else (name, target, a.name))
    return [(a, b, n) for a, b, n in out if a != b]


def unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return sorted(found)


def upward(edges: dict[str, set[str]]) -> list[str]:
    return sorted(f"{a} -> {b}" for a, bs in edges.items() for b in bs
                  if unit(a) != unit(b) and RANK[unit(b)] >= RANK[unit(a)])


def sideways(edges: dict[str, set[str]]) -> list[str]:
    """Engines importing engines: only engine/common.py may be imported, and it imports none."""
    return sorted(f"{a} -> {b}" for a, bs in edges.items() for b in bs
                  if unit(a) == unit(b) == "engine" and b != "tocom.engine"
                  and (b != ENGINE_SHARED or a == ENGINE_SHARED))


@pytest.fixture(scope="module")
def graph():
    mods = modules()
    edges = {m: set() for m in mods}
    found = imports(mods)
    for a, b, _ in found:
        edges[a].add(b)
    return mods, edges, found


def test_every_module_has_a_layer(graph):
    mods, _, _ = graph
    assert sorted({unit(m) for m in mods} - set(RANK)) == []


def test_no_import_circle(graph):
    assert cycles(graph[1]) == []


def test_no_module_imports_a_higher_layer(graph):
    assert upward(graph[1]) == []


def test_no_engine_imports_another_engine(graph):
    assert sideways(graph[1]) == []


def test_no_module_imports_a_private_name_of_another(graph):
    assert sorted(f"{a}: {b}.{n}" for a, b, n in graph[2] if n.startswith("_") and not n.startswith("__")) == []


def test_the_checks_catch_what_they_guard_against():
    """The circles and layer breaks this refactor removed, on a made-up graph."""
    edges = {"tocom.models": {"tocom.segment.model"}, "tocom.segment.model": {"tocom.models"},
             "tocom.compress.flops": {"tocom.segment.model"},
             "tocom.engine.segment": {"tocom.engine.evaluate", ENGINE_SHARED},
             "tocom.engine.common": {"tocom.engine.finetune"}}
    assert cycles(edges) == [["tocom.models", "tocom.segment.model"]]
    assert upward(edges) == ["tocom.compress.flops -> tocom.segment.model", "tocom.models -> tocom.segment.model"]
    assert sideways(edges) == ["tocom.engine.common -> tocom.engine.finetune",
                               "tocom.engine.segment -> tocom.engine.evaluate"]
    mods = modules()
    assert ("tocom.models", "tocom.errors", "TocomError") in imports(mods)       # from .errors import TocomError
    assert ("tocom.data.registry", "tocom.data.segmentation", "") in imports(mods)   # from . import segmentation
