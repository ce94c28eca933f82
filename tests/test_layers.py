"""The import rule of docs/architecture.md: each layer imports only the layers below it, no
cycles, no import of marjax inside a function. Read from the source, nothing imported."""
import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "marjax"

# Bottom to top. A module imports its own layer only inside its own package (bottom layer: any
# of it, without cycles), and lower layers freely.
LAYERS = [
    {"errors", "config", "parallel", "checkpoints", "workdir", "data", "torch_files", "torch_layout", "image_files",
     "metrics", "compile_cache", "stored_programs", "metric_writer", "run_health"},
    {"blocks"},
    {"heads", "tokenizers", "feature_networks"},
    {"models"},
    {"sampling"},
    {"tasks"},
    {"main", "api", "train", "sample", "edit", "evaluate", "compile_report", "convert", "cache_tokens", "digits_check"},
]
PROGRAM_DISPATCHER = "main"
# Config files are read where a config meets a family (tasks) and by the programs.
CONFIG_READERS = {"tasks", *LAYERS[-1]}


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def unit(module: str) -> str:
    """marjax.tasks.mar -> "tasks"; marjax.train -> "train"."""
    return module.split(".")[1]


def layer(module: str) -> int:
    return next(i for i, units in enumerate(LAYERS) if unit(module) in units)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(path: pathlib.Path) -> list[tuple[str, bool]]:
    """(imported marjax module, inside a function?) for every import of marjax in the file;
    `from marjax.a import b` names the module marjax.a.b when there is one, else marjax.a."""
    tree = ast.parse(path.read_text())
    in_functions = {id(inner) for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                    for inner in ast.walk(node) if inner is not node}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in MODULES else node.module
                     for alias in node.names]
        else:
            continue
        found += [(name, id(node) in in_functions) for name in names if name.split(".")[0] == "marjax"]
    return found


GRAPH = {m: sorted({name for name, _ in imports(p) if name in MODULES and name != m}) for m, p in MODULES.items()}


def test_every_module_has_a_layer():
    units = set().union(*LAYERS)
    assert not [m for m in MODULES if m != "marjax" and unit(m) not in units]


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m != "marjax"))
def test_imports_point_down(module):
    problems = []
    for name, in_function in imports(MODULES[module]):
        if in_function:
            problems.append(f"{name} imported inside a function")
        target = name if name in MODULES else name.rsplit(".", 1)[0]
        if target == "marjax" or target not in MODULES:
            continue
        if layer(target) > layer(module):
            problems.append(f"{target} is a layer above")
        elif layer(target) == layer(module) and layer(module) > 0 and unit(target) != unit(module) \
                and unit(module) != PROGRAM_DISPATCHER:
            problems.append(f"{target} is another package of the same layer")
        if unit(target) == "config" and layer(module) > 0 and unit(module) not in CONFIG_READERS:
            problems.append(f"{target}: only tasks and programs read configs")
    assert not problems, problems


def test_no_import_cycles():
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in GRAPH[node]:
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for module in GRAPH:
        if module not in state:
            visit(module, [module])
    assert not cycles, cycles


def test_the_rule_catches_an_upward_import(tmp_path, monkeypatch):
    """The checker itself: a blocks module importing a task is reported."""
    bad = tmp_path / "bad.py"
    bad.write_text("from marjax.tasks.mar import build\n\n\ndef f():\n    import marjax.errors\n")
    found = imports(bad)
    assert ("marjax.tasks.mar", False) in found and ("marjax.errors", True) in found
    assert layer("marjax.tasks.mar") > layer("marjax.blocks.attention")
