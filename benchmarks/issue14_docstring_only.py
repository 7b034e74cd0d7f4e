"""Issue 14: prove that a change touched only docstrings and comments.

For every file given, parse the version at ``--base`` (a git revision) and the working-tree
version, delete every docstring (the first statement of a module, class or function when it is a
string constant), and compare ``ast.dump`` of the two trees. Comments never reach the AST, so equal
dumps mean the code is the same statement for statement; ``__all__`` is code and is compared too.
Prints one line per file and exits 1 if any file's code changed.

    python benchmarks/issue14_docstring_only.py --base abab039 src/congealing/classical/entropy.py ...
"""
from __future__ import annotations

import argparse
import ast
import subprocess
import sys
from pathlib import Path


def strip_docstrings(tree: ast.AST) -> ast.AST:
    """Remove the docstring of ``tree`` and of every class and function in it (in place)."""
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
    return tree


def code_dump(source: str, name: str) -> str:
    return ast.dump(strip_docstrings(ast.parse(source, filename=name)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="git revision holding the files before the change")
    parser.add_argument("files", nargs="+")
    args = parser.parse_args()
    changed = 0
    for name in args.files:
        before = subprocess.run(["git", "show", f"{args.base}:{name}"], capture_output=True, text=True, check=True).stdout
        after = Path(name).read_text()
        same = code_dump(before, name) == code_dump(after, name)
        text_changed = before != after
        changed += not same
        print(f"{'same code' if same else 'CODE CHANGED'}  {'(text edited)' if text_changed else '(untouched)  '}  {name}")
    return 1 if changed else 0


if __name__ == "__main__":
    sys.exit(main())
