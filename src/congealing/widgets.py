"""Widgets that work twice: live in a Jupyter kernel, and still in the rendered HTML book.

No chapter teaches this module; every chapter uses it, first Chapter 1, "1.6 A tiny spatial
transformer" (:func:`frame_slider`) and "1.7 Explore: every generator, swept" (:func:`tabbed`),
and the introduction's "How to read and run this book" says what a reader of the page gets.

The rendered book has no kernel, so no Python callback can run there. Every widget here is
therefore built from *precomputed* frames: an ``ipywidgets.Stack`` of ``Image`` widgets whose
``selected_index`` is ``jslink``-ed to a slider (or to tab/toggle buttons). The link runs in the
browser, and an executed notebook stores the widget state, so the page keeps working as a static
file. The algorithms never import this module.

>>> png = to_png(torch.zeros(3, 8, 8))
>>> png[:4] == b"\\x89PNG"
True
"""
from __future__ import annotations

import io
from typing import Sequence

import numpy as np
import torch
from PIL import Image as PILImage

__all__ = [
    "to_png", "figure_png", "glue", "frame_slider", "tabbed",
]


def to_png(picture, size: int | None = None) -> bytes:
    """PNG bytes of a picture: a tensor, an array, a PIL image or a matplotlib figure.

    The frames of :func:`frame_slider` are made with it; no chapter section is about it.

    Args:
        picture: a ``(3|1, H, W)`` tensor or ``(H, W[, 3|4])`` array in ``[0, 1]`` (clipped) or
            ``uint8``, a PIL image, or a matplotlib figure (saved at its dpi, tight bounding box).
        size: the longer side of the result in pixels (nearest-neighbour when enlarging, Lanczos
            when shrinking); None keeps the picture's size.

    Returns:
        the PNG file's bytes.

    Example:
        >>> import io
        >>> png = to_png(torch.ones(1, 4, 8), size=16)
        >>> PILImage.open(io.BytesIO(png)).size                # (width, height)
        (16, 8)
    """
    if hasattr(picture, "savefig"):
        buffer = io.BytesIO()
        picture.savefig(buffer, format="png", bbox_inches="tight", dpi=picture.dpi)
        image = PILImage.open(io.BytesIO(buffer.getvalue()))
    elif isinstance(picture, PILImage.Image):
        image = picture
    else:
        array = picture.detach().cpu().numpy() if isinstance(picture, torch.Tensor) else np.asarray(picture)
        if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
            array = np.moveaxis(array, 0, -1)
        if array.ndim == 3 and array.shape[-1] == 1:
            array = array[..., 0]
        if array.dtype != np.uint8:
            array = (np.clip(array, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
        image = PILImage.fromarray(array)
    if size is not None:
        scale = size / max(image.size)
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), PILImage.NEAREST if scale > 1 else PILImage.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="png")
    return buffer.getvalue()


def figure_png(figure) -> bytes:
    """PNG bytes of a matplotlib figure, which is then closed.

    The frame of a precomputed widget, drawn once and kept out of the page (and out of memory);
    Chapter 2, "Watching it happen" draws its frames so.

    Args:
        figure: a matplotlib figure; closed even if saving fails.

    Returns:
        the PNG file's bytes.

    Example:
        >>> import matplotlib.pyplot as plt
        >>> fig = plt.figure(figsize=(1, 1))
        >>> figure_png(fig)[:4] == b"\\x89PNG", plt.fignum_exists(fig.number)
        (True, False)
    """
    import matplotlib.pyplot as plt

    try:
        return to_png(figure)
    finally:
        plt.close(figure)


def glue(name: str, value) -> None:
    """Record ``value`` under ``name`` for the page's prose.

    The prose quotes it as ``{glue:text}`name:.1f```: MyST-NB's ``glue``, hidden from the page, so
    every number in the text comes from the run that built it. Where MyST-NB is not installed
    (Colab, a bare Jupyter) the notebook still runs and nothing is recorded. A one-element tensor or
    NumPy scalar is stored as the Python number it holds, so that the text can be formatted
    (``:.1f``). Chapters 3 to 7 quote their measured numbers through it.

    Args:
        name: the key the prose names.
        value: a number, a one-element tensor or NumPy scalar, or anything MyST-NB can glue.

    Example:
        >>> glue("answer", torch.tensor(42.0))  # in a plain Python session: recorded nowhere, no error
    """
    if hasattr(value, "item"):
        value = value.item()
    try:
        from myst_nb import glue as myst_glue
    except ImportError:
        return
    myst_glue(name, value, display=False)


def frame_slider(frames: Sequence, labels: Sequence[str] | None = None, description: str = "step", size: int | None = None, width: str | None = None):
    """A slider over precomputed frames (pictures or figures), with a caption per frame.

    Moving the slider shows the matching frame, in a kernel and in the static HTML alike. First used
    in Chapter 1, "1.6 A tiny spatial transformer".

    Args:
        frames: PNG bytes, or anything :func:`to_png` takes.
        labels: one caption per frame (None: no captions).
        description: the slider's label.
        size: the longer side of every frame in pixels (see :func:`to_png`).
        width: a CSS width for the images (e.g. ``"300px"``), or None.

    Returns:
        an ``ipywidgets.VBox``: the slider, the captions (if any) and the frames.

    Raises:
        ValueError: no frames, or a number of labels other than the number of frames.

    Example:
        >>> box = frame_slider([torch.zeros(1, 4, 4), torch.ones(1, 4, 4)], labels=["dark", "light"])
        >>> len(box.children), box.children[0].max                # slider, captions, frames; 2 frames
        (3, 1)
    """
    import ipywidgets as widgets

    if len(frames) == 0:
        raise ValueError("frame_slider needs at least one frame")
    layout = widgets.Layout(width=width) if width else widgets.Layout()
    images = [widgets.Image(value=frame if isinstance(frame, bytes) else to_png(frame, size), format="png", layout=layout) for frame in frames]
    stack = widgets.Stack(images, selected_index=0)
    slider = widgets.IntSlider(value=0, min=0, max=len(frames) - 1, description=description, continuous_update=True)
    children = [slider, stack]
    widgets.jslink((slider, "value"), (stack, "selected_index"))
    if labels is not None:
        if len(labels) != len(frames):
            raise ValueError(f"{len(frames)} frames but {len(labels)} labels")
        captions = widgets.Stack([widgets.HTML(f"<code>{label}</code>") for label in labels], selected_index=0)
        widgets.jslink((slider, "value"), (captions, "selected_index"))
        children.insert(1, captions)
    return widgets.VBox(children)


def tabbed(panels: dict):
    """Put several widgets in tabs (tab switching also works without a kernel).

    First used in Chapter 1, "1.7 Explore: every generator, swept".

    Args:
        panels: ``{title: widget}``, in tab order.

    Returns:
        an ``ipywidgets.Tab``.

    Example:
        >>> import ipywidgets
        >>> tabbed({"first": ipywidgets.HTML("1"), "second": ipywidgets.HTML("2")}).titles
        ('first', 'second')
    """
    import ipywidgets as widgets

    tab = widgets.Tab(children=list(panels.values()))
    for index, title in enumerate(panels):
        tab.set_title(index, title)
    return tab
