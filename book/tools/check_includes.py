"""Check that every ``{literalinclude}`` in the book's notebooks points at a file that exists and,
with ``:pyobject:``, at a function or class (``Class.method`` too) defined in it.

Run from the repository root: ``python book/tools/check_includes.py``. Prints one line per broken
include and exits 1 if there is any. The modules are parsed with :mod:`ast`, never imported.
"""
from __future__ import annotations

import ast
import json
import re
import sys
from pathlib import Path

BOOK = Path(__file__).resolve().parents[1]
INCLUDE = re.compile(r"```\{literalinclude\}\s+(?P<path>\S+)\s*\n(?P<options>(?::[^\n]*\n?)*)")


def defined_names(tree: ast.Module) -> set[str]:
    """Top-level functions and classes of a module, and ``Class.method`` for their methods."""
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
            if isinstance(node, ast.ClassDef):
                names |= {f"{node.name}.{child.name}" for child in node.body if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}
    return names


def broken_includes(book: Path = BOOK) -> list[str]:
    """``notebook: path[:pyobject]: what is wrong`` for every include that does not resolve."""
    problems, parsed = [], {}
    for notebook in sorted(book.glob("*.ipynb")):
        for cell in json.loads(notebook.read_text())["cells"]:
            if cell["cell_type"] != "markdown":
                continue
            for match in INCLUDE.finditer("".join(cell["source"])):
                path = (notebook.parent / match["path"]).resolve()
                where = f"{notebook.name}: {match['path']}"
                if not path.is_file():
                    problems.append(f"{where}: no such file")
                    continue
                wanted = re.search(r"^:pyobject:\s*(\S+)", match["options"], re.M)
                if wanted is None:
                    continue
                if path not in parsed:
                    parsed[path] = defined_names(ast.parse(path.read_text(), filename=str(path)))
                if wanted[1] not in parsed[path]:
                    problems.append(f"{where}:{wanted[1]}: not defined there")
    return problems


if __name__ == "__main__":
    found = broken_includes()
    print("\n".join(found) if found else "every literalinclude resolves")
    sys.exit(1 if found else 0)
