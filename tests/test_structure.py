"""The shape of the code, read from its own imports (``ast``; nothing is imported or run).

Every ``import`` statement counts, at module level or inside a function: a function-level
import still ties two modules together, it only hides the tie until the function runs.

The rules (docs/extending.md):

* **Packages.** The top-level packages are ``probe``, ``steering`` and ``circuits``; the
  sub-packages ``probe.behaviour`` and ``probe.vlm`` are plugins of ``probe`` and count as
  packages of their own. Everything else under ``probe/`` (``probe.data``, ``probe.engine``,
  ...) is the core package ``probe``.
* **(a) No private names across packages.** A module may use an underscore name (``_x``,
  not ``__dunder__``) only from its own package: neither ``from other.mod import _x`` nor
  ``import other.mod as m; m._x`` nor an underscore module (``other._mod``).
* **(b) No import cycles** among the modules of the three packages. An edge runs from a module
  to the module it names (``from a.b import c`` names ``a.b.c`` when that is a module, else
  ``a.b``); a package's ``__init__`` is drawn only when names are taken from it. Imports under
  ``if TYPE_CHECKING:`` never run and are not edges (annotations only).
* **(c) ``probe`` imports neither ``steering`` nor ``circuits``** (its plugins included).
* **(e) No import runs back up** the floors of docs/extending.md: a module placed on a floor
  there imports nothing placed on a higher one (modules the table does not name are skipped).
* **(f) One module registers torch hooks**: only ``probe/hooks.py`` calls
  ``register_forward_hook`` / ``register_forward_pre_hook`` / ``register_full_backward_hook`` /
  ``register_hook`` (and their kin); everything else goes through the hook layer.
* **(d) One error base.** Every class named ``*Error`` derives from
  :class:`probe.errors.EmoprobeError`, which the command line reports as ``error:`` + exit 2,
  and no two modules define an error class of the same name.
* **(g) No module over 500 lines** (STYLE.md): split it where its concepts part.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("probe", "steering", "circuits")
PLUGINS = ("probe.behaviour", "probe.vlm")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    """``{dotted name: path}`` of every module of the three packages."""
    found = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            found[_module_name(path)] = path
    return found


def package_of(module: str) -> str:
    """The package a module belongs to for rule (a): a plugin, or its top-level package."""
    for plugin in PLUGINS:
        if module == plugin or module.startswith(plugin + "."):
            return plugin
    return module.split(".")[0]


@dataclass(frozen=True)
class Use:
    """One module naming another: ``target`` (a module) and the names taken from it."""

    source: str
    target: str
    names: tuple[str, ...]
    line: int


def _resolve(source: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = source.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def uses(modules: dict[str, Path]) -> list[Use]:
    """Every import in every module (function-level ones included), resolved to modules.

    Attribute access on an imported module (``import probe.cli as base; base._x``) is
    recorded as a use of ``_x`` from that module.
    """
    out = []
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        is_package = path.name == "__init__.py"
        aliases: dict[str, str] = {}  # local name -> module it is bound to
        for node in _walk(tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    out.append(Use(name, a.name, (), node.lineno))
                    if a.asname:
                        aliases[a.asname] = a.name
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(name, is_package, node)
                taken = []
                for a in node.names:
                    sub = f"{base}.{a.name}"
                    if sub in modules:
                        out.append(Use(name, sub, (), node.lineno))
                        aliases[a.asname or a.name] = sub
                    else:
                        taken.append(a.name)
                if taken:
                    out.append(Use(name, base, tuple(taken), node.lineno))
        for node in _walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in aliases):
                out.append(Use(name, aliases[node.value.id], (node.attr,), node.lineno))
    return [u for u in out if u.target.split(".")[0] in PACKAGES]


def _walk(tree: ast.AST):
    """``ast.walk`` without the bodies of ``if TYPE_CHECKING:`` (they never run)."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _type_checking(child.test):
                todo.extend(child.orelse)
            else:
                todo.append(child)


def _type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_crossings(found: list[Use]) -> list[str]:
    bad = []
    for u in found:
        if package_of(u.source) == package_of(u.target):
            continue
        hidden = [n for n in u.names if _private(n)]
        if any(_private(part) for part in u.target.split(".")):
            hidden.append(u.target)
        if hidden:
            bad.append(f"{u.source}:{u.line} takes {', '.join(hidden)} from {u.target}")
    return bad


def import_graph(modules: dict[str, Path], found: list[Use]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for u in found:
        if u.target in modules and u.target != u.source:
            graph[u.source].add(u.target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _ties(graph: dict[str, set[str]], component: list[str]) -> str:
    members = set(component)
    return "; ".join(f"{a} -> {b}" for a in component for b in sorted(graph[a] & members))


@pytest.fixture(scope="module")
def code():
    modules = all_modules()
    return modules, uses(modules)


def test_the_reader_sees_every_kind_of_import(tmp_path):
    """The checks below are only as good as the reader: function-level, relative and
    attribute uses are all found."""
    text = ("import probe.cli as base\n"
            "from . import sibling\n"
            "if TYPE_CHECKING:\n"
            "    from probe.store import Store\n"
            "def f():\n"
            "    from probe.results import _atomic_write\n"
            "    return base._model_args\n")
    mods = {"steering.x": tmp_path / "x.py", "steering.sibling": tmp_path / "sibling.py",
            "probe.cli": tmp_path / "cli.py", "probe.results": tmp_path / "results.py",
            "probe.store": tmp_path / "store.py"}
    for path in mods.values():
        path.write_text("")
    mods["steering.x"].write_text(text)
    found = uses(mods)
    assert private_crossings(found) == [
        "steering.x:6 takes _atomic_write from probe.results",
        "steering.x:7 takes _model_args from probe.cli"]
    graph = import_graph(mods, found)
    assert graph["steering.x"] == {"probe.cli", "probe.results", "steering.sibling"}
    graph["probe.cli"].add("steering.x")
    assert cycles(graph) == [["probe.cli", "steering.x"]]


def test_plugins_import_no_private_names(code):
    modules, found = code
    bad = private_crossings(found)
    assert not bad, "private names used across packages:\n" + "\n".join(bad)


def test_no_import_cycles(code):
    modules, found = code
    graph = import_graph(modules, found)
    loops = cycles(graph)
    assert not loops, "import cycles:\n" + "\n".join(_ties(graph, c) for c in loops)


def test_probe_imports_neither_steering_nor_circuits(code):
    modules, found = code
    bad = [f"{u.source}:{u.line} imports {u.target}" for u in found
           if u.source.split(".")[0] == "probe" and u.target.split(".")[0] != "probe"]
    assert not bad, "\n".join(bad)


def error_classes(modules: dict[str, Path]) -> dict[str, list[str]]:
    """``{"module.Class": [base names]}`` of every class whose name ends in ``Error``."""
    found = {}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef) and node.name.endswith("Error"):
                found[f"{name}.{node.name}"] = [ast.unparse(b).split(".")[-1] for b in node.bases]
    return found


def test_every_error_class_derives_from_emoprobe_error(code):
    modules, _ = code
    classes = error_classes(modules)
    good = {"EmoprobeError"}
    while True:  # a subclass of a good class is good (ModelNotAvailableError(ModelError))
        more = {q.split(".")[-1] for q, bases in classes.items() if good & set(bases)}
        if more <= good:
            break
        good |= more
    bad = sorted(q for q in classes if q.split(".")[-1] not in good)
    assert len(classes) > 30 and not bad, f"not EmoprobeError subclasses: {bad}"


def shared_names(classes: dict[str, list[str]]) -> dict[str, list[str]]:
    """``{class name: [modules]}`` of the names that more than one module defines."""
    homes: dict[str, list[str]] = {}
    for qualified in classes:
        module, _, name = qualified.rpartition(".")
        homes.setdefault(name, []).append(module)
    return {n: sorted(m) for n, m in homes.items() if len(m) > 1}


def test_no_two_error_classes_share_a_name(code):
    """One class per error name: ``except ScoringError`` means the same thing everywhere."""
    modules = code[0]
    classes = error_classes(modules)
    assert shared_names({"a.XError": [], "b.XError": [], "b.YError": []}) == {"XError": ["a", "b"]}
    twins = shared_names(classes)
    assert len(classes) > 30 and not twins, f"error classes defined twice: {twins}"


#: The most lines a module of the three packages may have (STYLE.md: "rarely above 500").
MAX_LINES = 500


def long_modules(paths) -> list[str]:
    """``"path: N lines"`` of every file over :data:`MAX_LINES`."""
    out = []
    for path in map(Path, paths):
        n = len(path.read_text(encoding="utf-8").splitlines())
        if n > MAX_LINES:
            out.append(f"{path}: {n} lines")
    return out


def test_no_module_is_over_500_lines(code, tmp_path):
    modules = code[0]
    too_long = tmp_path / "long.py"
    too_long.write_text("x = 1\n" * (MAX_LINES + 1))
    assert long_modules([too_long]) == [f"{too_long}: {MAX_LINES + 1} lines"]
    bad = long_modules(sorted(modules.values()))
    assert len(modules) > 100 and not bad, "split these modules:\n" + "\n".join(bad)


def floors_from_docs() -> dict[str, int]:
    """``{module or package prefix: floor}`` from the floors table of docs/extending.md."""
    import re

    floors = {}
    for line in (ROOT / "docs" / "extending.md").read_text(encoding="utf-8").splitlines():
        row = re.match(r"\| (\d) \|[^|]*\|(.*)\|$", line)
        if not row:
            continue
        for name in re.findall(r"`([\w/.]+)`", row.group(2)):
            if name in ("steering/", "circuits/"):
                floors[name.rstrip("/")] = int(row.group(1))
            elif name.endswith((".py", "/")):
                floors["probe." + name.removesuffix(".py").rstrip("/")] = int(row.group(1))
    return floors


def _floor(module: str, floors: dict[str, int]) -> int | None:
    if module == "probe":
        return 1
    keys = [k for k in floors if module == k or module.startswith(k + ".")]
    return floors[max(keys, key=len)] if keys else None


def test_no_import_runs_back_up_the_documented_floors(code):
    modules, found = code
    floors = floors_from_docs()
    assert len(floors) > 30 and floors["probe.errors"] == 1 and floors["steering"] == 6
    unplaced = sorted(m for m in modules if m.startswith("probe.") and _floor(m, floors) is None)
    assert not unplaced, f"modules without a floor in docs/extending.md: {unplaced}"
    graph = import_graph(modules, found)
    up = [f"{a} (floor {_floor(a, floors)}) imports {b} (floor {_floor(b, floors)})"
          for a in sorted(graph) for b in sorted(graph[a])
          if None not in (_floor(a, floors), _floor(b, floors))
          and _floor(b, floors) > _floor(a, floors)]
    assert not up, "imports that run back up (docs/extending.md):\n" + "\n".join(up)



#: The run kinds, file and experiment names of plugins (``probe behave``, ``probe conflict``,
#: steering, circuits) that the core report once hard-coded. (Metric names such as ``flip_to``
#: in the report's general headline order are not a plugin's.)
PLUGIN_WORDS = ("steer", "circuit", "directions", "geometry", "behave", "conflict", "cosine",
                "heldout_auroc", "items_", "flips", "abs_r", "persistence", "personas")


def code_strings(path: Path) -> list[tuple[int, str]]:
    """``(line, text)`` of every string constant in ``path`` except docstrings."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docs = {id(node.body[0].value) for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
            and node.body and isinstance(node.body[0], ast.Expr)
            and isinstance(node.body[0].value, ast.Constant)}
    return [(n.lineno, n.value) for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docs]


def test_the_core_report_names_no_plugin():
    """Run kinds register their report sections (probe.report_kinds); the core report's code
    names none of them (docstrings and comments may)."""
    files = sorted((ROOT / "probe").glob("report*.py"))
    assert len(files) >= 4
    bad = [f"{p.name}:{line} {text!r}" for p in files for line, text in code_strings(p)
           if any(w in text.lower() for w in PLUGIN_WORDS)]
    assert not bad, "the core report names a plugin:\n" + "\n".join(bad)


def test_the_plugin_words_are_found_where_they_are():
    """The check above reads string constants: it finds a plugin's word in one."""
    assert any("steer-flips" in text for _, text in code_strings(ROOT / "steering" / "flips" / "cli.py"))


# ------------------------------------------------------------------ library vs command line
def is_cli_layer(path: Path) -> bool:
    """The command-line layer: ``cli.py``, ``*_cli.py``, ``cli_*.py`` (``probe/cli_args.py``,
    the public argument groups and loaders) and ``__main__.py``; only these may read an
    ``argparse.Namespace``."""
    name = path.name
    return (name in ("cli.py", "__main__.py") or name.endswith("_cli.py")
            or name.startswith("cli_"))


def namespace_uses(path: Path) -> list[str]:
    """Where a module imports ``argparse``, or a function takes a parameter named ``args``
    (``*args`` is not one) or annotated ``argparse.Namespace``/``Namespace``."""
    bad = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "argparse"
                                                for a in node.names):
            bad.append(f"{node.lineno}: imports argparse")
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "argparse":
            bad.append(f"{node.lineno}: imports from argparse")
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            a = node.args
            for arg in [*a.posonlyargs, *a.args, *a.kwonlyargs]:
                note = ast.unparse(arg.annotation) if arg.annotation else ""
                if arg.arg == "args" or note.split(".")[-1].strip("'\"") == "Namespace":
                    bad.append(f"{node.lineno}: {getattr(node, 'name', 'lambda')}({arg.arg}"
                               f"{': ' + note if note else ''})")
    return bad


def test_the_namespace_check_finds_what_it_looks_for(tmp_path):
    path = tmp_path / "lib.py"
    path.write_text("import argparse\n"
                    "def run(args):\n    return args.x\n"
                    "def go(ns: argparse.Namespace, *args):\n    pass\n"
                    "f = lambda module, inputs: inputs\n")
    assert namespace_uses(path) == ["1: imports argparse", "2: run(args)",
                                    "4: go(ns: argparse.Namespace)"]
    assert is_cli_layer(Path("probe/behaviour/cli.py")) and is_cli_layer(Path("probe/cli_args.py"))
    assert not is_cli_layer(Path("probe/behaviour/run.py"))


def test_only_the_command_line_layer_reads_argparse(code):
    """Library functions take values (options dataclasses, keyword arguments); turning flags into
    them is the command line's job."""
    modules, _ = code
    library = {m: p for m, p in modules.items() if not is_cli_layer(p)}
    assert "probe.behaviour.run" in library and "probe.behaviour.cli" not in library
    bad = [f"{m}:{where}" for m, p in sorted(library.items()) for where in namespace_uses(p)]
    assert not bad, "argparse outside the command-line layer:\n" + "\n".join(bad)


def test_steering_and_circuits_do_not_import_each_other(code):
    """Plugins build on probe only: what both need (directions read from a store) is core."""
    _, found = code
    top = {"steering": "circuits", "circuits": "steering"}
    bad = [f"{u.source}:{u.line} imports {u.target}" for u in found
           if top.get(u.source.split(".")[0]) == u.target.split(".")[0]]
    assert not bad, "one plugin imports another:\n" + "\n".join(bad)


#: Torch's ways of placing a hook; only the hook layer (probe/hooks.py) calls them.
TORCH_HOOK_CALLS = ("register_forward_hook", "register_forward_pre_hook",
                    "register_full_backward_hook", "register_full_backward_pre_hook",
                    "register_backward_hook", "register_hook", "register_module_forward_hook",
                    "register_module_forward_pre_hook")
HOOK_LAYER = "probe.hooks"


def torch_hook_calls(modules: dict[str, Path]) -> list[str]:
    """``module:line name`` of every call of a torch hook registration outside the hook layer
    (as an attribute, ``m.register_forward_hook(...)``, or a bare name)."""
    bad = []
    for name, path in modules.items():
        if name == HOOK_LAYER:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call):
                continue
            f = node.func
            called = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", None)
            if called in TORCH_HOOK_CALLS:
                bad.append(f"{name}:{node.lineno} {called}")
    return bad


def test_only_the_hook_layer_registers_torch_hooks(code, tmp_path):
    modules, _ = code
    bad = torch_hook_calls(modules)
    assert not bad, "torch hooks registered outside probe/hooks.py:\n" + "\n".join(bad)
    # the scan finds them (the test can fail), and leaves the hook layer alone
    other = tmp_path / "other.py"
    other.write_text("def f(m, t):\n    m.register_forward_pre_hook(print)\n"
                     "    return t.register_hook(print)\n")
    assert torch_hook_calls({"circuits.other": other, HOOK_LAYER: modules[HOOK_LAYER]}) == [
        "circuits.other:2 register_forward_pre_hook", "circuits.other:3 register_hook"]
