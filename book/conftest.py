"""nbval's run of the book's notebooks, kept as executed notebooks for the book build.

``pytest --nbval-lax book/*.ipynb --executed-notebooks DIR`` (``make notebooks``) writes each notebook
that ran without an error to ``DIR/<name>.ipynb``, with the outputs and widget state of that very
run; ``book/tools/execute_notebooks.py --executed DIR`` (``make test``) then renders those instead of
executing every notebook a second time. The pages show exactly the run the notebook tests checked.

nbval keeps only what it compares (it drops widget messages and ``clear_output``, and merges a cell's
printed text), so the outputs are rebuilt here from every kernel message nbval reads, by nbclient's
own message handling: the notebook is the one ``nbclient`` (the book build's executor) would store.
"""
from __future__ import annotations

from pathlib import Path

import nbclient
import nbformat
import pytest
from ipykernel.ipkernel import IPythonKernel
from nbclient.exceptions import CellExecutionComplete


def pytest_addoption(parser):
    parser.addoption(
        "--executed-notebooks", metavar="DIR", default=None,
        help="write each notebook nbval ran without an error to DIR/<name>.ipynb (replacing an earlier run's), with its outputs and widget state",
    )


class ExecutedNotebook:
    """One notebook's outputs, rebuilt from the kernel messages of nbval's run of it.

    Args:
        path: the notebook nbval runs.
        folder: where the executed notebook is written when its last code cell has run.
    """

    def __init__(self, path: Path, folder: Path):
        self.notebook = nbformat.read(path, as_version=4)
        self.notebook.metadata["language_info"] = dict(IPythonKernel.language_info)  # as nbclient stores it
        self.client = nbclient.NotebookClient(self.notebook, record_timing=False)  # no kernel: only its message handling is used
        self.target = folder / path.name
        self.target.unlink(missing_ok=True)  # an earlier run's copy never stands in for this one
        self.code_cells = [i for i, cell in enumerate(self.notebook.cells) if cell.cell_type == "code"]
        self.cell_num = -1
        self.index: int | None = None  # the cell whose outputs are being recorded
        self.msg_id: str | None = None
        self.executed = 0
        self.failed = False

    def watch(self, kernel) -> None:
        """Route ``kernel``'s executions and iopub messages through this object (nbval's own calls)."""
        self.client.kc = kernel.kc  # for nbclient's stand-in of an Output widget's frontend, which messages the kernel
        execute, get_message = kernel.execute_cell_input, kernel.get_message

        def execute_cell_input(source, allow_stdin=None):
            self.msg_id = execute(source, allow_stdin=allow_stdin)
            return self.msg_id

        def message(stream, timeout=None):
            msg = get_message(stream, timeout=timeout)
            if stream == "iopub":
                self.handle(msg)
            return msg

        kernel.execute_cell_input, kernel.get_message = execute_cell_input, message

    def handle(self, msg: dict) -> None:
        if self.index is None or msg["parent_header"].get("msg_id") != self.msg_id:
            return  # another request's message (nbval's own kernel_info, say)
        try:
            self.client.process_message(msg, self.notebook.cells[self.index], self.index)
        except CellExecutionComplete:
            pass

    def start(self, cell_num: int) -> None:
        self.cell_num, self.index = cell_num, self.code_cells[cell_num]
        if self.client.skip_cells_with_tag in self.notebook.cells[self.index].metadata.get("tags", []):
            self.index = None  # nbval runs it; nbclient, and so the book, leaves it out
            return
        self.notebook.cells[self.index].outputs = []
        self.client.clear_before_next_output = False  # what nbclient resets before each cell

    def finish(self, passed: bool) -> None:
        if self.index is not None:
            self.executed += 1
            cell = self.notebook.cells[self.index]
            cell.execution_count = self.executed  # as nbclient numbers them, after the cell
            for output in cell.outputs:
                if output.output_type == "execute_result":
                    output.execution_count = self.executed  # nbval's requests do not count executions; nbclient's do
        self.failed |= not passed
        if self.cell_num == len(self.code_cells) - 1 and not self.failed:
            self.client.set_widgets_metadata()
            self.target.parent.mkdir(parents=True, exist_ok=True)
            partial = self.target.with_suffix(".partial")
            nbformat.write(self.notebook, partial)
            partial.replace(self.target)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    folder = item.config.getoption("--executed-notebooks")
    kernel = getattr(item.parent, "kernel", None)
    if folder is None or kernel is None or not hasattr(item, "cell_num"):
        yield
        return
    record = getattr(item.parent, "executed_notebook", None)
    if record is None:
        record = item.parent.executed_notebook = ExecutedNotebook(Path(str(item.parent.fspath)), Path(folder))
        record.watch(kernel)
    record.start(item.cell_num)
    outcome = yield
    record.finish(passed=outcome.excinfo is None)
