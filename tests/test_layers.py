"""The package's import arrows follow the layer order written in README.md ("Layers"), read with
`ast` from every module, imports inside function bodies included: no back edge, no cycle.

An import inside a function body is still an arrow. Between packages, outside cli.py, it is allowed
only with a `# lazy:` comment saying what it keeps out of a fast start (torch for the ONNX path,
say), never to dodge a cycle: move the code instead.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "plantid"
README = ROOT / "README.md"
LAYERS_HEADING = "Layers, top to bottom"


@dataclass(frozen=True)
class Arrow:
    """One `import` of a plantid module: who, what, where, and whether it sits in a function body."""

    source: str
    target: str
    line: int
    in_function: bool
    lazy_comment: bool


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer_order(readme: str = "") -> list[list[str]]:
    """The README's layer list: one line a layer, top first; names on one line do not import each other."""
    lines = (readme or README.read_text(encoding="utf-8")).splitlines()
    start = next(i for i, line in enumerate(lines) if LAYERS_HEADING in line)
    fence = next(i for i in range(start, len(lines)) if lines[i].startswith("```"))
    end = next(i for i in range(fence + 1, len(lines)) if lines[i].startswith("```"))
    return [line.split() for line in lines[fence + 1:end] if line.strip()]


def _has_lazy_comment(source_lines: list[str], node: ast.stmt) -> bool:
    """The import, or the comment line right above its run of imports, says `# lazy:`."""
    first = node.lineno - 1
    if any("# lazy:" in source_lines[i] for i in range(first, node.end_lineno or node.lineno)):
        return True
    above = first - 1
    while above >= 0 and source_lines[above].strip().startswith(("from ", "import ")):
        if "# lazy:" in source_lines[above]:
            return True
        above -= 1
    return above >= 0 and source_lines[above].strip().startswith("# lazy:")


def _targets(node: ast.Import | ast.ImportFrom, modules: dict[str, Path]) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] == "plantid"]
    assert node.level == 0, "plantid imports are absolute"
    if not node.module or node.module.split(".")[0] != "plantid":
        return []
    # `from plantid.infer import tta` imports the module plantid.infer.tta
    named = [f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in modules]
    return named or [node.module]


def arrows(modules: dict[str, Path] | None = None) -> list[Arrow]:
    """Every plantid import of every module, module level and function level."""
    modules = modules or all_modules()
    found = []
    for name, path in modules.items():
        text = path.read_text(encoding="utf-8")
        tree = ast.parse(text)
        source_lines = text.splitlines()
        in_function = {id(sub) for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                       for sub in ast.walk(node)}
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for target in _targets(node, modules):
                    found.append(Arrow(name, target, node.lineno, id(node) in in_function,
                                       _has_lazy_comment(source_lines, node)))
    return found


def area(module: str) -> str:
    """The layer-list name of a module: its first part below plantid (plantid.infer.tta -> infer)."""
    return module.split(".")[1] if "." in module else module


def back_edges(found: list[Arrow], layers: list[list[str]]) -> list[str]:
    rank = {name: i for i, line in enumerate(layers) for name in line}
    rank["plantid"] = len(layers)  # the package's own __init__ (its version) is below everything
    bad = []
    for a in found:
        source, target = area(a.source), area(a.target)
        if source == target or source == "plantid":
            continue
        if rank[target] <= rank[source]:
            bad.append(f"{a.source}:{a.line} imports {a.target} ({target} is not below {source})")
    return bad


def cycles(found: list[Arrow]) -> list[list[str]]:
    """Module-level cycles of the import graph (every arrow counted), each as the modules around it."""
    graph: dict[str, set[str]] = {}
    for a in found:
        if a.source != a.target:
            graph.setdefault(a.source, set()).add(a.target)
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []
    out = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                out.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return out


def test_every_module_has_a_layer_in_the_readme():
    named = {name for line in layer_order() for name in line}
    missing = sorted({area(m) for m in all_modules()} - named - {"plantid"})
    assert not missing, f"add these to README's '{LAYERS_HEADING}' list: {missing}"


def test_imports_run_down_the_layers_only():
    assert back_edges(arrows(), layer_order()) == []


def test_no_import_cycles_counting_imports_inside_functions():
    assert cycles(arrows()) == []


def test_imports_inside_functions_say_why_they_are_lazy():
    unexplained = [f"{a.source}:{a.line} imports {a.target}" for a in arrows()
                   if a.in_function and area(a.source) not in ("cli", area(a.target)) and not a.lazy_comment]
    assert unexplained == [], "move these to the module's top, or say `# lazy: <what it keeps out of a fast start>`"


def test_the_checks_catch_a_back_edge_and_a_hidden_cycle(tmp_path):
    """The checker itself: a lower layer importing a higher one, inside a function, is found."""
    package = tmp_path / "plantid"
    (package / "low").mkdir(parents=True)
    (package / "high").mkdir()
    (package / "low" / "a.py").write_text("def f():\n    from plantid.high.b import g\n    return g\n")
    (package / "high" / "b.py").write_text("from plantid.low.a import f\n\ndef g():\n    return f\n")
    modules = {"plantid.low.a": package / "low" / "a.py", "plantid.high.b": package / "high" / "b.py"}
    found = arrows(modules)
    layers = layer_order("Layers, top to bottom:\n```\nhigh\nlow\n```\n")
    assert back_edges(found, layers) == ["plantid.low.a:2 imports plantid.high.b (high is not below low)"]
    assert cycles(found) == [["plantid.high.b", "plantid.low.a", "plantid.high.b"]]
    assert [a.lazy_comment for a in found if a.in_function] == [False]
