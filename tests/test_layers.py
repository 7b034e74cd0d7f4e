"""The import rules of the library, read from the source with :mod:`ast` (nothing is imported).

The layers, top to bottom (CONTRIBUTING.md, "How the library is layered"):

====================  =====================================================================
applications          cli, align, report, report_page, report_scores, report_folder, widgets
evaluation            evaluation, sweeps, mnist, registry, lego
methods               classical, neural, spacejam, congeal3d (packages), diffusion_prior
foundations           warps, data, features (three packages), metrics, losses, runtime,
                      checkpoints, files, errors, alignment, _compat
====================  =====================================================================

Rules:

(a) a module imports only from its own layer or the layers below it;
(b) a method never imports another method (shared pieces go to a foundation, e.g. ``losses``); a
    package's modules (``congeal3d/*.py``, ``features/*.py``) count as their package, so they may
    import each other;
(c) no in-package import inside a function (hiding an import there is how cycles were dodged);
(d) ``argparse`` and ``SystemExit`` belong to ``cli`` alone: the library raises
    :class:`congealing.errors.CongealError` and the command turns it into one line and exit 2.

There are no exceptions: a new one is a design question for the lead, not an allow-list entry.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "congealing"

LAYERS: dict[str, tuple[str, ...]] = {
    "applications": ("cli", "align", "report", "report_page", "report_scores", "report_folder", "widgets"),
    "evaluation": ("evaluation", "sweeps", "mnist", "registry", "lego"),
    "methods": ("classical", "neural", "spacejam", "congeal3d", "diffusion_prior"),
    "foundations": ("warps", "data", "features", "metrics", "losses", "runtime", "checkpoints", "files", "errors", "alignment", "_compat"),
}
RANK = {module: rank for rank, modules in enumerate(reversed(LAYERS.values())) for module in modules}
METHODS = set(LAYERS["methods"])

def _modules() -> dict[str, ast.Module]:
    """Every module of the package by name: ``metrics`` for ``metrics.py``, ``congeal3d/poses`` for a
    subpackage's module (its ``__init__.py`` is ``congeal3d/__init__``)."""
    paths = [path for path in sorted(PACKAGE.glob("*.py")) if path.stem != "__init__"] + sorted(PACKAGE.glob("*/*.py"))
    return {path.relative_to(PACKAGE).with_suffix("").as_posix(): ast.parse(path.read_text(), filename=str(path)) for path in paths}


def _owner(module: str) -> str:
    """The layer map's name of a module: a subpackage's modules count as the subpackage."""
    return module.split("/")[0]


def _imported(node: ast.AST, modules: set[str], inside_subpackage: bool = False) -> list[str]:
    """The package modules (layer-map names) an import statement names (``from . import a``,
    ``from .a import x``, ``import congealing.a``, ``from congealing import a``,
    ``from congealing.a import x``); in a subpackage's module, ``from . import b`` / ``from .b
    import x`` name the subpackage itself and ``from .. import a`` / ``from ..a import x`` the
    package's modules."""
    if isinstance(node, ast.Import):
        return [alias.name.split(".")[1] for alias in node.names if alias.name.startswith("congealing.")]
    if not isinstance(node, ast.ImportFrom):
        return []
    top_level = 2 if inside_subpackage else 1
    if node.level == 0 and node.module and (node.module == "congealing" or node.module.startswith("congealing.")):
        path = node.module.split(".")[1:]
    elif inside_subpackage and node.level == 1:
        return ["<own subpackage>"]
    elif node.level == top_level:
        path = node.module.split(".") if node.module else []
    else:
        return []
    if path:
        return [path[0]]
    return [alias.name for alias in node.names if alias.name in modules]


def _imports(tree: ast.Module, modules: set[str], module: str = "") -> list[tuple[str, int, bool]]:
    """``(imported module, line, inside a function)`` for every in-package import of ``tree`` (the
    module named ``module``); an import of a module's own subpackage names that subpackage."""
    found = []
    owners = {_owner(name) for name in modules}

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            for target in _imported(child, owners, inside_subpackage="/" in module):
                found.append((_owner(module) if target == "<own subpackage>" else target, child.lineno, in_function))
            visit(child, nested)

    visit(tree, False)
    return found


def layer_violations(trees: dict[str, ast.Module]) -> list[str]:
    """Rules (a) and (b)."""
    problems = []
    for module, tree in trees.items():
        owner = _owner(module)
        for target, line, _ in _imports(tree, set(trees), module):
            if target == owner:
                continue
            if RANK[target] > RANK[owner]:
                problems.append(f"{module}.py:{line} imports {target}, a layer above it")
            elif owner in METHODS and target in METHODS:
                problems.append(f"{module}.py:{line} imports {target}: methods do not import each other")
    return problems


def function_import_violations(trees: dict[str, ast.Module]) -> list[str]:
    """Rule (c)."""
    return [
        f"{module}.py:{line} imports {target} inside a function"
        for module, tree in trees.items()
        for target, line, inside in _imports(tree, set(trees), module)
        if inside
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
    owners = {_owner(module) for module in trees}
    assert owners == set(RANK), f"give these modules a layer: {sorted(owners ^ set(RANK))}"


def test_the_congeal3d_package_is_read_module_by_module(trees):
    assert {"congeal3d/__init__", "congeal3d/config", "congeal3d/cameras", "congeal3d/field", "congeal3d/poses", "congeal3d/maps",
            "congeal3d/pipeline", "congeal3d/camera_files", "congeal3d/captures"} <= set(trees)


def test_the_foundation_packages_are_read_module_by_module(trees):
    assert {"warps/__init__", "warps/transforms", "warps/grids",
            "data/__init__", "data/sources", "data/images", "data/datasets",
            "features/__init__", "features/backbones", "features/pca", "features/cosegmentation", "features/flips"} <= set(trees)
    assert all(_owner(module) in LAYERS["foundations"] for module in trees if module.split("/")[0] in ("warps", "data", "features"))


def test_a_package_re_exports_exactly_its_modules_public_names():
    """A package's ``__init__.py`` is its public API: its ``__all__`` is the union of its modules'
    ``__all__`` (so ``from congealing.features import cosegment`` works for every public name), and
    every name it lists is the object its module defines."""
    import importlib

    packages = sorted(path.parent.name for path in PACKAGE.glob("*/__init__.py"))
    assert {"warps", "data", "features", "congeal3d"} <= set(packages)
    for package in packages:
        init = importlib.import_module(f"congealing.{package}")
        parts = [path.stem for path in sorted((PACKAGE / package).glob("*.py")) if not path.stem.startswith("_")]
        modules = [importlib.import_module(f"congealing.{package}.{part}") for part in parts]
        listed = [name for module in modules for name in module.__all__]
        assert len(listed) == len(set(listed)), f"{package}: two modules export the same name"
        assert sorted(init.__all__) == sorted(listed), f"{package}/__init__.py: {sorted(set(init.__all__) ^ set(listed))}"
        for module in modules:
            assert all(getattr(init, name) is getattr(module, name) for name in module.__all__), module.__name__


def test_no_module_imports_a_layer_above_it_and_methods_stay_apart(trees):
    assert layer_violations(trees) == []


def test_no_in_package_import_inside_a_function(trees):
    assert function_import_violations(trees) == []


def test_argparse_and_system_exit_only_in_the_cli(trees):
    assert command_line_violations(trees) == []


def test_the_rules_catch_what_they_forbid():
    planted = {
        "warps": ast.parse("from . import report\n"),  # (a): a foundation reaching up
        "classical": ast.parse("from .neural import fit\n"),  # (b): one method using another
        "data": ast.parse("def f():\n    from .runtime import get_mode\n"),  # (c)
        "report": ast.parse("import argparse\nraise SystemExit(2)\n"),  # (d)
        "neural": ast.parse("from . import warps\n"), "runtime": ast.parse(""), "cli": ast.parse("import argparse\n"),
        # a subpackage's module: its siblings are in-method, the package's modules are two dots up
        "congeal3d/poses": ast.parse("from . import field\nfrom .field import render\nfrom ..features import load_backbone\nfrom ..neural import train\nfrom .. import report\n"),
        # a foundation package's module: its siblings are its own package, the methods are above it
        "features/pca": ast.parse("from .backbones import extract_descriptors\nfrom ..runtime import cache_dir\nfrom ..spacejam import fit\n"),
    }
    assert layer_violations(planted) == [
        "warps.py:1 imports report, a layer above it", "classical.py:1 imports neural: methods do not import each other",
        "congeal3d/poses.py:4 imports neural: methods do not import each other", "congeal3d/poses.py:5 imports report, a layer above it",
        "features/pca.py:3 imports spacejam, a layer above it",
    ]
    assert function_import_violations(planted) == ["data.py:2 imports runtime inside a function"]
    assert command_line_violations(planted) == ["report.py:1 imports argparse", "report.py:2 uses SystemExit"]


def test_every_module_names_its_public_api_in_all():
    """``__all__`` lists exactly the public functions and classes each module defines (plus
    upper-case constants it chooses to export), and every listed name exists."""
    import importlib

    for path in sorted(PACKAGE.glob("*.py")) + sorted(PACKAGE.glob("*/*.py")):
        if path.stem.startswith("_") and path.name != "__init__.py" or path.parent == PACKAGE and path.name == "__init__.py":
            continue
        name = ".".join(path.relative_to(PACKAGE).with_suffix("").parts).removesuffix(".__init__")
        module = importlib.import_module(f"congealing.{name}")
        assert hasattr(module, "__all__"), f"{path.name} has no __all__"
        missing = [name for name in module.__all__ if not hasattr(module, name)]
        assert missing == [], f"{path.name}: __all__ names {missing}, which it does not define"
        tree = ast.parse(path.read_text())
        public = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and not n.name.startswith("_")}
        assert sorted(public - set(module.__all__)) == [], f"{path.name}: public names left out of __all__"
