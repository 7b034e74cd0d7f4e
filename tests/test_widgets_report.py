"""Static-friendly widgets and the congeal align report."""
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from congealing import report, widgets  # noqa: E402


def test_to_png_accepts_tensors_arrays_and_figures():
    assert widgets.to_png(torch.rand(3, 10, 12))[:4] == b"\x89PNG"
    assert widgets.to_png(torch.rand(10, 12).numpy())[:4] == b"\x89PNG"
    fig = plt.figure(figsize=(1, 1))
    assert widgets.to_png(fig)[:4] == b"\x89PNG"
    plt.close(fig)


def test_frame_slider_links_slider_to_frames_in_the_browser():
    import ipywidgets

    box = widgets.frame_slider([torch.rand(3, 8, 8) for _ in range(4)], labels=list("abcd"))
    slider, captions, stack = box.children
    assert isinstance(slider, ipywidgets.IntSlider) and slider.max == 3
    assert isinstance(stack, ipywidgets.Stack) and len(stack.children) == 4
    # The link must be a jslink (runs in the browser, so it works without a kernel).
    from ipywidgets.widgets.widget import _instances
    from ipywidgets.widgets.widget_link import Link

    links = [w for w in _instances.values() if isinstance(w, Link)]
    assert any(link.source == (slider, "value") and link.target == (stack, "selected_index") for link in links)
    with pytest.raises(ValueError):
        widgets.frame_slider([torch.rand(3, 8, 8)], labels=["a", "b"])
    with pytest.raises(ValueError):
        widgets.frame_slider([])


def test_report_layout_and_safety(tmp_path):
    out = tmp_path / "report"
    names = ["bird 1.jpg", "bird2.png"]
    report.write_alignment(
        out, method="test", names=names, inputs=torch.rand(2, 3, 16, 16), aligned=torch.rand(2, 3, 16, 16),
        atlas={"mean": torch.rand(3, 16, 16), "saliency": torch.rand(1, 16, 16)}, mode="quick",
        transforms=torch.eye(3).repeat(2, 1, 1), extra_images={"edit": torch.rand(2, 3, 16, 16)}, summary={"seconds": 1.5},
    )
    assert (out / "index.html").exists() and (out / "atlas.png").exists() and (out / "atlas_saliency.png").exists()
    assert sorted(p.name for p in (out / "aligned").iterdir()) == ["bird 1_jpg.png", "bird2_png.png"]
    mappings = torch.load(out / "mappings.pt", weights_only=True)
    assert mappings["transforms"].shape == (2, 3, 3) and mappings["names"] == names
    summary = json.loads((out / "summary.json").read_text())
    assert summary["seconds"] == 1.5 and summary["mode"] == "quick"
    html = (out / "index.html").read_text()
    assert 'src="edit/bird%201_jpg.png"' in html and "atlas.png" in html
    # Rewriting an earlier report is fine; overwriting somebody's folder is not.
    report.write_alignment(out, method="test", names=names, inputs=torch.rand(2, 3, 8, 8), aligned=torch.rand(2, 3, 8, 8), atlas={"mean": torch.rand(3, 8, 8)}, mode="quick")
    precious = tmp_path / "photos"
    precious.mkdir()
    (precious / "holiday.jpg").write_bytes(b"...")
    with pytest.raises(OSError, match="did not write"):
        report.write_alignment(precious, method="test", names=names, inputs=torch.rand(2, 3, 8, 8), aligned=torch.rand(2, 3, 8, 8), atlas={"mean": torch.rand(3, 8, 8)}, mode="quick")
    assert (precious / "holiday.jpg").read_bytes() == b"..."
