"""Print the notebooks listed in _toc.yml (one per line), the set nbval and the book build run.

``--longest-first`` prints the slowest notebooks first (``LONGEST``), so that nbval's two workers
(``make notebooks``: pytest-xdist in the given order) start them at once and share out the rest; the
book's parallel execution (``book/tools/execute_notebooks.py``) uses the same order.
"""
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
#: The notebooks that take longest in quick mode (Chapter 7 trains every method; Chapter 6 fits a shape;
#: Chapter 5 trains SpaceJAM), slowest first.
LONGEST = ("book/ch07_comparison", "book/ch06_congeal3d", "book/ch05_spacejam")


def toc_notebooks() -> list[Path]:
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [entry["file"] for entry in _entries(toc)]
    return [ROOT / f"{name}.ipynb" for name in files if (ROOT / f"{name}.ipynb").exists()]


def _entries(node):
    if isinstance(node, dict):
        if "file" in node:
            yield node
        for value in node.values():
            yield from _entries(value)
    elif isinstance(node, list):
        for item in node:
            yield from _entries(item)


def longest_first(notebooks: list[Path]) -> list[Path]:
    """``notebooks`` with those named in :data:`LONGEST` first, in that order; the rest as given."""
    rank = {name: i for i, name in enumerate(LONGEST)}
    key = lambda p: rank.get(str(p.relative_to(ROOT).with_suffix("")), len(rank))  # noqa: E731
    return sorted(notebooks, key=key)


if __name__ == "__main__":
    notebooks = toc_notebooks()
    if "--longest-first" in sys.argv[1:]:
        notebooks = longest_first(notebooks)
    print("\n".join(str(p.relative_to(ROOT)) for p in notebooks))
