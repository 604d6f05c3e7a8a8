"""The shape of the package: layers that only import downwards, no import cycles, and no code
outside `models/` that asks which architecture it holds."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "attnkit"

# Each top-level module or package of attnkit, by layer: a unit may import only units of lower
# layers (and itself). Commands on top, the shared basics at the bottom.
LAYERS = {
    "errors": 0,
    "config": 1,
    "runtime": 1,
    "console": 1,
    "files": 1,
    "data": 2,
    "evaluation": 2,
    "models": 3,
    "runs": 4,
    "generation": 5,
    "training": 6,
    "serving": 7,
    "interop": 7,
    "study": 7,
    "cli": 8,
    "__main__": 9,
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every attnkit module `path` imports, at module level or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("attnkit")}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("attnkit"):
            found.add(node.module)
            # `from attnkit.cli import demo` imports the module attnkit.cli.demo
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


MODULES = {module_name(path): path for path in PACKAGE.rglob("*.py")}
GRAPH = {
    name: {target for target in imports(path) if target in MODULES and target != name}
    for name, path in MODULES.items()
}


def unit(module: str) -> str:
    return module.split(".")[1] if module != "attnkit" else "attnkit"


def test_every_unit_has_a_layer():
    assert {unit(m) for m in MODULES} - {"attnkit"} <= set(LAYERS)


def test_units_import_only_lower_layers():
    upward = [
        f"{source} imports {target}"
        for source, targets in GRAPH.items()
        for target in targets
        if unit(source) != unit(target)
        and unit(target) != "attnkit"
        and LAYERS[unit(target)] >= LAYERS.get(unit(source), 0)
    ]
    assert not upward, "\n".join(upward)


def test_no_import_cycles():
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(GRAPH[module]):
            if state.get(target) == 1:
                cycles.append(" -> ".join([*path[path.index(target) :], target]))
            elif target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module, [module])
    assert not cycles, "\n".join(cycles)


ARCHITECTURE_QUESTIONS = re.compile(
    r"\.arch\s*(==|!=|\bin\b)|isinstance\([^)]*\b(Transformer|RecurrentSeq2Seq)\b"
    r"|\.attention\s*(==|!=)\s*\"none\""
)


def test_no_code_outside_models_asks_which_architecture_it_holds():
    asked = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in PACKAGE.rglob("*.py")
        if "models" not in path.relative_to(PACKAGE).parts
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if ARCHITECTURE_QUESTIONS.search(line)
    ]
    assert not asked, "\n".join(asked)


def test_the_documentation_points_only_inside_the_repository():
    documents = [ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *PACKAGE.rglob("*.py")]
    outside = [
        str(path.relative_to(ROOT))
        for path in documents
        if re.search(
            r"DESIGN\.md|shared folder|\.\./shared/(DESIGN|STYLE)", path.read_text("utf-8")
        )
    ]
    assert not outside
