"""Ray at the edges: the core and the outputs import and run without Ray (the GPU machine has
none); only raycity.tune and the sweep/cv drivers need it. And no import cycles."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import raycity

CORE = ["raycity.config", "raycity.constants", "raycity.data", "raycity.data.cache",
        "raycity.folds", "raycity.model", "raycity.metrics", "raycity.engine", "raycity.training",
        "raycity.checkpoint", "raycity.foldstates", "raycity.hostcopy", "raycity.inference",
        "raycity.results", "raycity.figures", "raycity.report", "raycity.evaluate", "raycity.predict",
        "raycity.run", "raycity.runtables", "raycity.foldfiles", "raycity.speed", "raycity.cli",
        "raycity.comparison", "raycity.compare", "raycity.tracking", "raycity.mlflowsetup",
        "raycity.searchview", "raycity.foldsession", "raycity.seeds",
        "raycity.data.__main__"]


def test_core_and_outputs_import_without_ray():
    code = ("import sys\nsys.modules['ray'] = None  # any `import ray` now fails\n"
            + "".join(f"import {m}\n" for m in CORE)
            + "from raycity.training import run_fold, FoldSteps\n"
            + "assert not [m for m in sys.modules if m.startswith('raycity.tune')], 'tune loaded'\n"
            + "print('ok')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_the_tune_package_is_where_ray_lives():
    code = ("import sys\nsys.modules['ray'] = None\n"
            "try:\n    import raycity.tune.trainable\nexcept ImportError:\n    print('needs ray')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert proc.stdout.strip() == "needs ray", proc.stderr


def imports_of(path: Path, package: Path) -> set[str]:
    """The raycity modules a file imports, at module level or inside functions."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}
    modules = {module_name(p, package) for p in package.rglob("*.py")}
    return {n for n in names if n in modules}


def module_name(path: Path, package: Path) -> str:
    parts = ("raycity", *path.relative_to(package).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_no_import_cycles_among_raycitys_modules():
    """Function-level imports included: a cycle hidden in a function is still a cycle."""
    package = Path(raycity.__file__).parent
    graph = {module_name(p, package): imports_of(p, package) for p in package.rglob("*.py")}
    for name in graph:  # a package's modules do not count as imports of the package
        graph[name] = {m for m in graph[name] if m != name and not name.startswith(f"{m}.")
                       and not (m.startswith(f"{name}.") and name in ("raycity", "raycity.data",
                                                                       "raycity.tune"))}
    cycles, state = [], {}

    def visit(node: str, path: list[str]) -> None:  # depth first; `path` holds the open nodes
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, cycles


def test_no_module_rebinds_a_global():
    """Wiring goes through arguments (or, where Tune restores an object from its pickle, a
    context variable scoped to the run: raycity.tune.recorder), never through a module global
    a function rebinds."""
    package = Path(raycity.__file__).parent
    rebinds = [f"{p.relative_to(package)}:{node.lineno}" for p in sorted(package.rglob("*.py"))
               for node in ast.walk(ast.parse(p.read_text())) if isinstance(node, ast.Global)]
    assert not rebinds, rebinds


def loaded_at_import(module: str, package: Path) -> set[str]:
    """What importing `module` loads: the module-level imports (not those inside functions,
    nor those only for type checkers), followed through raycity's own modules."""
    seen, todo, loaded = set(), [module], set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = package.joinpath(*name.split(".")[1:])
        path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
        if not path.is_file():  # a name imported from a module, not a module
            continue
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            else:
                continue
            loaded |= set(names)
            for found in names:
                parts = found.split(".")
                if parts[0] == "raycity":  # its packages' __init__ run first
                    todo += [".".join(parts[:i]) for i in range(2, len(parts) + 1)]
    return loaded


def test_a_stand_in_trial_and_the_entry_points_load_no_torchvision():
    """A trial that runs a stand-in fold (tests, benchmarks) or only needs the fold's state
    never loads torchvision, which loads torch._dynamo: ≈ 2 s of CPU in every trial process.
    Nor do the entry points until they need it: a user's mistake is said ≈ 2.5 s sooner."""
    package = Path(raycity.__file__).parent
    for module in ("raycity.tune.trainable", "raycity.foldsession", "raycity.constants",
                   "raycity.seeds", "raycity.cli", "raycity.cv", "raycity.sweep", "raycity.data",
                   "raycity.data.cache"):
        loaded = loaded_at_import(module, package)
        assert not {m for m in loaded if m.split(".")[0] == "torchvision"}, module
    assert "torchvision.models" in loaded_at_import("raycity.training", package)  # it sees
