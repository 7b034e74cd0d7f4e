"""The book's structure: every notebook follows the conventions of CONTRIBUTING.md."""
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import yaml

from toc_notebooks import toc_notebooks

ROOT = Path(__file__).resolve().parents[1]
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())
COLAB_CELL = (ROOT / "book" / "_colab_cell.py").read_text().strip()
NOTEBOOKS = sorted((ROOT / "book").glob("*.ipynb"))


def test_every_notebook_is_in_the_table_of_contents():
    assert NOTEBOOKS, "the book has no notebooks"
    assert set(toc_notebooks()) == set(NOTEBOOKS)


def test_one_repository_url_for_buttons_and_colab_install():
    url = CONFIG["repository"]["url"]
    assert url in COLAB_CELL
    assert CONFIG["launch_buttons"]["colab_url"] == "https://colab.research.google.com"
    assert CONFIG["execute"]["execute_notebooks"] == "force"


def test_static_pages_use_no_cdn():
    sphinx = CONFIG["sphinx"]["config"]
    scripts = list(sphinx["nb_ipywidgets_js"]) + [sphinx["mathjax_path"]]
    assert all("://" not in script for script in scripts), scripts


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_conventions(path):
    nb = nbformat.read(path, as_version=4)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert all(not cell.get("outputs") and cell.get("execution_count") is None for cell in code), "commit notebooks without outputs"
    assert nb.cells[0].cell_type == "markdown" and re.match(r"# Chapter \d+: ", nb.cells[0].source)
    colab = nb.cells[1]
    assert colab.source.strip() == COLAB_CELL and "hide-input" in colab.metadata.get("tags", [])
    source = "\n".join(cell.source for cell in code)
    assert "runtime.get_mode()" in source and "LABEL" in source
    assert re.search(r"^\s*assert ", source, re.M), "a chapter checks its claims with asserts"
    for cell in code:
        if "frame_slider(" in cell.source or "tabbed(" in cell.source:
            assert cell.source.startswith("# NBVAL_IGNORE_OUTPUT"), "widget cells are ignored by nbval"
    titles = re.findall(r"(?:suptitle|set_title|title)\((f?\".*?\")", source)
    assert any("LABEL" in t for t in titles), "figures must say which mode made them"
    includes = re.findall(r":pyobject: (\w+)", "\n".join(c.source for c in nb.cells if c.cell_type == "markdown"))
    assert includes, "chapters show the library's real code with literalinclude"
    solutions = [c for c in code if "hide-cell" in c.metadata.get("tags", [])]
    assert len(solutions) >= 3, "each chapter ends with exercises and (hidden) solutions"


def test_nbval_and_the_book_build_share_one_per_cell_time_limit():
    makefile = (ROOT / "Makefile").read_text()
    limits = re.findall(r"--nbval-cell-timeout=(\d+)", makefile)
    assert limits == [str(CONFIG["execute"]["timeout"])], limits


def test_workflows_are_valid_github_actions():
    workflows = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
    assert workflows
    checker = Path(sys.executable).with_name("check-jsonschema")
    result = subprocess.run([str(checker), "--builtin-schema", "vendor.github-workflows", *map(str, workflows)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    ci = (ROOT / ".github" / "workflows" / "ci.yml").read_text()
    assert "bash .ci/run" in ci and "nbval" in ci and "CONGEAL_MODE: full" in ci


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme and "make book" in readme
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_every_literalinclude_resolves():
    """``book/tools/check_includes.py``: every include names an existing file and pyobject."""
    result = subprocess.run([sys.executable, str(ROOT / "book" / "tools" / "check_includes.py")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_parallel_execution_returns_the_executed_notebook_or_the_error(tmp_path):
    """``book/tools/execute_notebooks.py`` (``make book``): a notebook comes back with its outputs, in
    its own folder; a failing one comes back as its error, which stops the build."""
    sys.path.insert(0, str(ROOT / "book" / "tools"))
    import execute_notebooks

    (tmp_path / "data.txt").write_text("read from the notebook's folder")
    good, bad = tmp_path / "good.ipynb", tmp_path / "bad.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print(open('data.txt').read())")]), good)
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1 / 0")]), bad)
    notebook, seconds, error = execute_notebooks.execute(good, timeout=60)
    assert error == "" and seconds > 0
    assert notebook.cells[0].outputs[0]["text"] == "read from the notebook's folder\n"
    notebook, _, error = execute_notebooks.execute(bad, timeout=60)
    assert notebook is None and "ZeroDivisionError" in error
