"""Execute the book's notebooks in parallel into a fresh jupyter-cache, then build the book from it.

    python book/tools/execute_notebooks.py [--workers N] [jupyter-book build options ...]
    python book/tools/execute_notebooks.py --executed DIR [jupyter-book build options ...]

``jupyter-book build`` executes notebooks one after another, so on a two-core machine one core idles
for the ~9 minutes the notebooks take. ``make book`` runs this script instead, which

1. empties ``_build/.jupyter_cache``, so nothing older than this run is ever shown;
2. executes every notebook of ``_toc.yml`` (nbclient, in the notebook's folder, with
   ``_config.yml``'s timeout) with ``N`` worker processes (default: the CPU count in quick mode, 1 in
   full mode, whose notebooks share one accelerator), the slowest first (``tests/toc_notebooks.py``),
   and stores each executed notebook in that cache;
3. builds with ``_build/_config_cached.yml``, which is ``_config.yml`` with ``execute_notebooks:
   cache``, passing the remaining options to ``jupyter-book build``. The build renders the notebooks
   executed in step 2 (it matches them by their code), so every number on the pages comes from this run.

If a notebook fails, the script prints its error and exits 1 without building. ``_config.yml`` itself
keeps ``execute_notebooks: force``: a plain ``jupyter-book build .`` executes every notebook, serially.

With ``--executed DIR`` (``make test``), step 2 takes the notebooks nbval has just executed
(``pytest --executed-notebooks DIR``, see ``book/conftest.py``) instead of running them again: each
must be there, with every code cell run and the same code as the notebook in ``book/``, or the script
says which is missing or out of date and exits 1 without building.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import nbclient
import nbformat
import yaml
from jupyter_cache import get_cache
from jupyter_cache.base import CacheBundleIn

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
from toc_notebooks import longest_first, toc_notebooks  # noqa: E402

CACHE = ROOT / "_build" / ".jupyter_cache"
CACHED_CONFIG = ROOT / "_build" / "_config_cached.yml"


#: What a notebook's execution can fail with (the message is passed back: nbclient's errors do not pickle).
FAILURES = (nbclient.exceptions.CellExecutionError, nbclient.exceptions.CellTimeoutError, nbclient.exceptions.DeadKernelError)


def execute(path: Path, timeout: int) -> tuple[nbformat.NotebookNode | None, float, str]:
    """``path``'s notebook executed in its own folder, the seconds it took and, if a cell failed, the
    error (the notebook is then None). No timing metadata is added to the cells: the cache matches a
    notebook by its code cells *and their metadata*, so the build would not recognise them."""
    notebook = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    try:
        nbclient.NotebookClient(notebook, timeout=timeout, record_timing=False, resources={"metadata": {"path": str(path.parent)}}).execute()
    except FAILURES as error:
        return None, time.perf_counter() - start, f"{type(error).__name__}: {error}"
    return notebook, time.perf_counter() - start, ""


def executed_copy(path: Path, folder: Path) -> tuple[nbformat.NotebookNode | None, str]:
    """``folder``'s executed copy of the notebook ``path`` (as ``pytest --executed-notebooks folder``
    writes it), or None and what is wrong with it: missing, a code cell not run (other than those
    tagged ``skip-execution``, which the book leaves out), or code that differs from ``path``'s (the
    notebook was edited after the run)."""
    copy = folder / path.name
    if not copy.exists():
        return None, f"{copy} is missing: run the notebooks first (make notebooks)"
    notebook = nbformat.read(copy, as_version=4)
    code = [cell.source for cell in nbformat.read(path, as_version=4).cells if cell.cell_type == "code"]
    cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    if [cell.source for cell in cells] != code:
        return None, f"{copy} holds other code than {path.relative_to(ROOT)}: run the notebooks again (make notebooks)"
    skipped = nbclient.NotebookClient.skip_cells_with_tag.default_value  # the tag nbclient (and book/conftest.py) leave unrun
    if any(cell.execution_count is None and skipped not in cell.metadata.get("tags", []) for cell in cells):
        return None, f"{copy} has cells that did not run: run the notebooks again (make notebooks)"
    return notebook, ""


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # Full mode's notebooks share one accelerator: one at a time there, as jupyter-book would.
    quick = os.environ.get("CONGEAL_MODE", "quick").strip().lower() == "quick"
    parser.add_argument("--workers", type=int, default=(os.cpu_count() or 1) if quick else 1)
    parser.add_argument("--executed", type=Path, metavar="DIR", help="render the notebooks nbval executed into DIR instead of executing them")
    args, build_options = parser.parse_known_args(argv)
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    timeout = config["execute"]["timeout"]

    shutil.rmtree(CACHE, ignore_errors=True)
    cache = get_cache(str(CACHE))
    failed = []
    if args.executed is not None:
        for path in toc_notebooks():
            notebook, error = executed_copy(path, args.executed)
            if error:
                print(error, flush=True)
                failed.append(path)
                continue
            cache.cache_notebook_bundle(CacheBundleIn(nb=notebook, uri=str(path)), check_validity=False, overwrite=True)
            print(f"{path.relative_to(ROOT)}: as nbval executed it", flush=True)
    else:
        with ProcessPoolExecutor(max_workers=args.workers) as pool:
            # Submitted slowest first; each worker takes the next notebook when it finishes one.
            running = {pool.submit(execute, path, timeout): path for path in longest_first(toc_notebooks())}
            for done in as_completed(running):
                path = running[done]
                notebook, seconds, error = done.result()
                if error:
                    print(f"{path.relative_to(ROOT)} failed after {seconds:.1f} s:\n{error}", flush=True)
                    failed.append(path)
                    continue
                cache.cache_notebook_bundle(CacheBundleIn(nb=notebook, uri=str(path), data={"execution_seconds": seconds}), check_validity=False, overwrite=True)
                print(f"{path.relative_to(ROOT)}: executed in {seconds:.1f} s", flush=True)
    if failed:
        print(f"{len(failed)} notebook(s) failed; the book is not built", flush=True)
        return 1

    config["execute"].update(execute_notebooks="cache", cache=str(CACHE))
    CACHED_CONFIG.write_text(yaml.safe_dump(config, sort_keys=False))
    build = [str(Path(sys.executable).with_name("jupyter-book")), "build", "--config", str(CACHED_CONFIG), *build_options, str(ROOT)]
    return subprocess.call(build)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
