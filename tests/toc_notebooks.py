"""Print the notebooks listed in _toc.yml (one per line), the set nbval and the book build run."""
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


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


if __name__ == "__main__":
    print("\n".join(str(p.relative_to(ROOT)) for p in toc_notebooks()))
