"""The book's structure: every notebook follows the conventions of CONTRIBUTING.md."""
import json
import re
import shutil
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


def test_executed_copy_is_refused_when_missing_stale_or_not_run(tmp_path):
    """``execute_notebooks.py --executed DIR`` (``make test``) renders nbval's run only if it is this code's, whole."""
    sys.path.insert(0, str(ROOT / "book" / "tools"))
    import execute_notebooks

    source = ROOT / "book" / "ch01_warps.ipynb"
    notebook = nbformat.read(source, as_version=4)
    copy = tmp_path / source.name
    assert execute_notebooks.executed_copy(source, tmp_path)[1].endswith("is missing: run the notebooks first (make notebooks)")
    for number, cell in enumerate(c for c in notebook.cells if c.cell_type == "code"):
        cell.execution_count = number + 1
    nbformat.write(notebook, copy)
    assert execute_notebooks.executed_copy(source, tmp_path)[1] == ""
    code = [c for c in notebook.cells if c.cell_type == "code"]
    code[-1].execution_count = None
    nbformat.write(notebook, copy)
    assert "cells that did not run" in execute_notebooks.executed_copy(source, tmp_path)[1]
    code[-1].execution_count, code[-1].source = 99, code[-1].source + "\n# edited"
    nbformat.write(notebook, copy)
    assert "holds other code" in execute_notebooks.executed_copy(source, tmp_path)[1]


def _outputs(notebook):
    """Each code cell's outputs, the widget state and the cells' numbers, with the widget model ids (random
    per run) renamed in the order the outputs and then the models refer to them."""
    state = notebook.metadata.get("widgets", {}).get("application/vnd.jupyter.widget-state+json", {}).get("state", {})
    outputs = [c.outputs for c in notebook.cells if c.cell_type == "code"]
    names: dict[str, str] = {}

    def visit(model_id):
        if model_id in names or model_id not in state:
            return
        names[model_id] = f"model {len(names)}"
        for child in re.findall(r"IPY_MODEL_(\w+)", json.dumps(state[model_id], sort_keys=True)):
            visit(child)

    for model_id in re.findall(r'"model_id": "(\w+)"', json.dumps(outputs)):
        visit(model_id)
    assert set(names) == set(state), "every widget is reachable from an output"
    text = json.dumps([outputs, state], sort_keys=True)
    for model_id, name in names.items():
        text = text.replace(model_id, name)
    outputs, state = json.loads(text)
    return outputs, state, [c.execution_count for c in notebook.cells if c.cell_type == "code"]


def test_nbval_run_is_kept_as_nbclient_would_store_it(tmp_path):
    """``book/conftest.py`` (``make notebooks``): the notebook nbval ran is written with the outputs and
    widget state that nbclient (``make book``'s executor) stores for the same notebook; a notebook with
    a failing cell is not written."""
    sys.path.insert(0, str(ROOT / "book" / "tools"))
    import execute_notebooks

    cells = [
        "print('one'); print('two', flush=True)\nimport sys; print('to stderr', file=sys.stderr)",
        "from IPython.display import display, clear_output, HTML\ndisplay(HTML('<b>gone</b>')); clear_output(); print('after clear')",
        "h = display(HTML('<i>first</i>'), display_id=True)\nh.update(HTML('<i>updated</i>'))\n40 + 2",
        "import ipywidgets as w\nbox = w.VBox([w.IntSlider(3), w.Image(value=b'not a real png', format='png')])\nbox",
        "out = w.Output()\ndisplay(out)\nwith out:\n    print('inside the widget')",
        "print('nbval runs this cell; the book leaves it out')",
        "from myst_nb import glue\nglue('answer', 42, display=False)",
    ]
    shutil.copy(ROOT / "book" / "conftest.py", tmp_path / "conftest.py")
    good, bad = tmp_path / "good.ipynb", tmp_path / "bad.ipynb"
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells], metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    notebook.cells[5].metadata["tags"] = ["skip-execution"]
    nbformat.write(notebook, good)
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print('ran')"), nbformat.v4.new_code_cell("1 / 0")]), bad)
    kept = tmp_path / "kept"
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval-lax", "--nbval-current-env",
                          "--executed-notebooks", str(kept), "good.ipynb", "bad.ipynb"], cwd=tmp_path, capture_output=True, text=True)
    assert "1 failed, 8 passed" in run.stdout, run.stdout[-3000:]
    assert sorted(p.name for p in kept.iterdir()) == ["good.ipynb"]
    captured = nbformat.read(kept / "good.ipynb", as_version=4)
    reference, seconds, error = execute_notebooks.execute(good, timeout=60)
    assert error == ""
    assert _outputs(captured) == _outputs(reference)
    outputs, state, counts = _outputs(captured)
    assert counts == [1, 2, 3, 4, 5, None, 6] and outputs[5] == []
    streams = {name: "".join(o["text"] for o in outputs[0] if o["name"] == name) for name in ("stdout", "stderr")}
    assert streams == {"stdout": "one\ntwo\n", "stderr": "to stderr\n"} and outputs[1] == [{"name": "stdout", "output_type": "stream", "text": "after clear\n"}]
    assert outputs[2][0]["data"]["text/html"] == "<i>updated</i>" and outputs[2][1]["data"]["text/plain"] == "42"
    models = {m["model_name"]: m for m in state.values()}
    assert models["IntSliderModel"]["state"]["value"] == 3 and models["ImageModel"]["buffers"][0]["path"] == ["value"]
    assert models["OutputModel"]["state"]["outputs"][0]["text"] == "inside the widget\n"
    assert captured.metadata["language_info"] == reference.metadata["language_info"]
    assert nbformat.validate(captured) is None
