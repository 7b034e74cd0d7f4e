"""The import rules of the library, read from the source with :mod:`ast` (nothing is imported).

The layers, top to bottom (CONTRIBUTING.md, "How the library is layered"):

====================  =====================================================================
applications          cli, align, report, report_folder, widgets
evaluation            evaluation, registry
methods               classical, neural, spacejam, congeal3d, captures, diffusion_prior
foundations           warps, data, features, metrics, losses, runtime, checkpoints, files,
                      errors, alignment, _compat
====================  =====================================================================

Rules:

(a) a module imports only from its own layer or the layers below it;
(b) a method never imports another method (shared pieces go to a foundation, e.g. ``losses``);
(c) no in-package import inside a function (hiding an import there is how cycles were dodged);
(d) ``argparse`` and ``SystemExit`` belong to ``cli`` alone: the library raises
    :class:`congealing.errors.CongealError` and the command turns it into one line and exit 2.

The allow-lists below are the known exceptions, each with its reason; an entry that is no longer
needed fails :func:`test_allow_lists_hold_no_stale_entries`, so the lists only shrink.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "congealing"

LAYERS: dict[str, tuple[str, ...]] = {
    "applications": ("cli", "align", "report", "report_folder", "widgets"),
    "evaluation": ("evaluation", "registry"),
    "methods": ("classical", "neural", "spacejam", "congeal3d", "captures", "diffusion_prior"),
    "foundations": ("warps", "data", "features", "metrics", "losses", "runtime", "checkpoints", "files", "errors", "alignment", "_compat"),
}
RANK = {module: rank for rank, modules in enumerate(reversed(LAYERS.values())) for module in modules}
METHODS = set(LAYERS["methods"])

#: (importer, imported) -> why an import that breaks rule (a) or (b) stays for now.
LAYER_EXCEPTIONS: dict[tuple[str, str], str] = {
    # 3-D congealing's command-line glue (align_folder, evaluate_lego, planar_transfers,
    # pck_by_rotation) still lives in congeal3d.py: it moves to align/evaluation when congeal3d
    # becomes a package (issue 14), after the real-capture work on the same file is merged.
    ("congeal3d", "evaluation"): "lego benchmark glue in congeal3d.py (issue 14: congeal3d package)",
    ("congeal3d", "report"): "congeal3d.align_folder writes the report (issue 14: congeal3d package)",
    ("congeal3d", "neural"): "planar_transfers: the comparison adapters of the lego benchmark",
    ("congeal3d", "spacejam"): "planar_transfers: the comparison adapters of the lego benchmark",
    ("congeal3d", "captures"): "evaluate_lego's capture row (issue 14: congeal3d package)",
    # captures.py is part of 3-D congealing (real captures for its benchmark); it will be a
    # submodule of the congeal3d package, where importing its parent is in-method.
    ("captures", "congeal3d"): "captures belongs to the 3-D method (issue 14: congeal3d package)",
    # captures.align_capture (congeal align --cameras) and evaluate_lego_capture (congeal eval
    # --dataset lego-capture) are the capture route's glue; they move to align/evaluation with it.
    ("captures", "report"): "align_capture writes the report (issue 14: congeal3d package)",
    ("captures", "evaluation"): "evaluate_lego_capture's peak memory (issue 14: congeal3d package)",
}

#: (module, imported) -> why an in-package import inside a function stays for now.
FUNCTION_IMPORT_EXCEPTIONS: dict[tuple[str, str], str] = {
    # congeal3d.py and captures.py are being edited on another branch (real captures); their
    # imports move to the top when congeal3d becomes a package (issue 14).
    ("congeal3d", "runtime"): "congeal3d.py under edit elsewhere (issue 14: congeal3d package)",
    ("congeal3d", "features"): "congeal3d.py under edit elsewhere (issue 14: congeal3d package)",
    ("congeal3d", "metrics"): "congeal3d.py under edit elsewhere (issue 14: congeal3d package)",
    ("congeal3d", "losses"): "congeal3d.py under edit elsewhere (issue 14: congeal3d package)",
    ("congeal3d", "data"): "congeal3d.py under edit elsewhere (issue 14: congeal3d package)",
    ("congeal3d", "evaluation"): "congeal3d.py under edit elsewhere (issue 14: congeal3d package)",
    ("congeal3d", "report"): "congeal3d.py under edit elsewhere (issue 14: congeal3d package)",
    ("congeal3d", "neural"): "congeal3d.py under edit elsewhere (issue 14: congeal3d package)",
    ("congeal3d", "spacejam"): "congeal3d.py under edit elsewhere (issue 14: congeal3d package)",
    ("congeal3d", "captures"): "congeal3d.py under edit elsewhere; captures imports congeal3d at its top",
    ("captures", "report"): "align_capture: application glue, imported where used so the method layer does not load it",
    ("captures", "evaluation"): "evaluate_lego_capture: evaluation glue, imported where used",
}


def _modules() -> dict[str, ast.Module]:
    return {path.stem: ast.parse(path.read_text(), filename=str(path)) for path in sorted(PACKAGE.glob("*.py")) if path.stem != "__init__"}


def _imported(node: ast.AST, modules: set[str]) -> list[str]:
    """The package modules an import statement names (``from . import a``, ``from .a import x``,
    ``import congealing.a``, ``from congealing import a``, ``from congealing.a import x``)."""
    if isinstance(node, ast.Import):
        return [alias.name.split(".")[1] for alias in node.names if alias.name.startswith("congealing.")]
    if not isinstance(node, ast.ImportFrom):
        return []
    if node.level == 0 and node.module and (node.module == "congealing" or node.module.startswith("congealing.")):
        path = node.module.split(".")[1:]
    elif node.level == 1:
        path = node.module.split(".") if node.module else []
    else:
        return []
    if path:
        return [path[0]]
    return [alias.name for alias in node.names if alias.name in modules]


def _imports(tree: ast.Module, modules: set[str]) -> list[tuple[str, int, bool]]:
    """``(imported module, line, inside a function)`` for every in-package import of ``tree``."""
    found = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            for target in _imported(child, modules):
                found.append((target, child.lineno, in_function))
            visit(child, nested)

    visit(tree, False)
    return found


def layer_violations(trees: dict[str, ast.Module]) -> list[str]:
    """Rules (a) and (b), minus :data:`LAYER_EXCEPTIONS`."""
    problems = []
    for module, tree in trees.items():
        for target, line, _ in _imports(tree, set(trees)):
            if target == module or (module, target) in LAYER_EXCEPTIONS:
                continue
            if RANK[target] > RANK[module]:
                problems.append(f"{module}.py:{line} imports {target}, a layer above it")
            elif module in METHODS and target in METHODS:
                problems.append(f"{module}.py:{line} imports {target}: methods do not import each other")
    return problems


def function_import_violations(trees: dict[str, ast.Module]) -> list[str]:
    """Rule (c), minus :data:`FUNCTION_IMPORT_EXCEPTIONS`."""
    return [
        f"{module}.py:{line} imports {target} inside a function"
        for module, tree in trees.items()
        for target, line, inside in _imports(tree, set(trees))
        if inside and (module, target) not in FUNCTION_IMPORT_EXCEPTIONS
    ]


def command_line_violations(trees: dict[str, ast.Module]) -> list[str]:
    """Rule (d): ``argparse`` or ``SystemExit`` (or ``sys.exit``) outside ``cli``."""
    problems = []
    for module, tree in trees.items():
        if module == "cli":
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Import) and any(alias.name.split(".")[0] == "argparse" for alias in node.names):
                problems.append(f"{module}.py:{node.lineno} imports argparse")
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "argparse":
                problems.append(f"{module}.py:{node.lineno} imports from argparse")
            elif isinstance(node, ast.Name) and node.id == "SystemExit":
                problems.append(f"{module}.py:{node.lineno} uses SystemExit")
            elif isinstance(node, ast.Attribute) and node.attr == "exit" and isinstance(node.value, ast.Name) and node.value.id == "sys":
                problems.append(f"{module}.py:{node.lineno} calls sys.exit")
    return problems


@pytest.fixture(scope="module")
def trees():
    return _modules()


def test_every_module_has_a_layer(trees):
    assert set(trees) == set(RANK), f"give these modules a layer: {sorted(set(trees) ^ set(RANK))}"


def test_no_module_imports_a_layer_above_it_and_methods_stay_apart(trees):
    assert layer_violations(trees) == []


def test_no_in_package_import_inside_a_function(trees):
    assert function_import_violations(trees) == []


def test_argparse_and_system_exit_only_in_the_cli(trees):
    assert command_line_violations(trees) == []


def test_allow_lists_hold_no_stale_entries(trees):
    imports = {(module, target, inside) for module, tree in trees.items() for target, _, inside in _imports(tree, set(trees))}
    assert [key for key in LAYER_EXCEPTIONS if not any((*key, inside) in imports for inside in (False, True))] == []
    assert [key for key in FUNCTION_IMPORT_EXCEPTIONS if (*key, True) not in imports] == []


def test_the_rules_catch_what_they_forbid():
    planted = {
        "warps": ast.parse("from . import report\n"),  # (a): a foundation reaching up
        "classical": ast.parse("from .neural import fit\n"),  # (b): one method using another
        "data": ast.parse("def f():\n    from .runtime import get_mode\n"),  # (c)
        "report": ast.parse("import argparse\nraise SystemExit(2)\n"),  # (d)
        "neural": ast.parse("from . import warps\n"), "runtime": ast.parse(""), "cli": ast.parse("import argparse\n"),
    }
    assert layer_violations(planted) == ["warps.py:1 imports report, a layer above it", "classical.py:1 imports neural: methods do not import each other"]
    assert function_import_violations(planted) == ["data.py:2 imports runtime inside a function"]
    assert command_line_violations(planted) == ["report.py:1 imports argparse", "report.py:2 uses SystemExit"]


def test_every_module_names_its_public_api_in_all():
    """``__all__`` lists exactly the public functions and classes each module defines (plus
    upper-case constants it chooses to export), and every listed name exists."""
    import importlib

    for path in sorted(PACKAGE.glob("*.py")):
        if path.stem.startswith("_"):
            continue
        module = importlib.import_module(f"congealing.{path.stem}")
        assert hasattr(module, "__all__"), f"{path.name} has no __all__"
        missing = [name for name in module.__all__ if not hasattr(module, name)]
        assert missing == [], f"{path.name}: __all__ names {missing}, which it does not define"
        tree = ast.parse(path.read_text())
        public = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and not n.name.startswith("_")}
        assert sorted(public - set(module.__all__)) == [], f"{path.name}: public names left out of __all__"
