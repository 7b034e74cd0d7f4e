"""The quick/full switch, seeding, device choice, and the congeal command's plumbing."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from congealing import cli, runtime


def test_mode_switch(monkeypatch):
    monkeypatch.delenv("CONGEAL_MODE", raising=False)
    assert runtime.get_mode() == "quick"
    monkeypatch.setenv("CONGEAL_MODE", "FULL")
    assert runtime.get_mode() == "full"
    assert runtime.get_mode("quick") == "quick"  # an explicit choice wins
    assert runtime.pick({"quick": 1, "full": 2}) == 2
    monkeypatch.setenv("CONGEAL_MODE", "fast")
    with pytest.raises(ValueError, match="quick"):
        runtime.get_mode()


def test_mode_config_plain_is_json_ready_and_matches_every_field():
    import json
    from dataclasses import fields

    from congealing import classical, neural, spacejam

    for config_type in (classical.LSQConfig, neural.NeuralCongealingConfig, spacejam.SpaceJAMConfig):
        config = config_type.for_mode("quick")
        plain = config.plain()
        assert list(plain) == [f.name for f in fields(config)]
        assert json.loads(json.dumps(plain)) == plain  # no tuples left: JSON gives back the same dict
        for name, value in plain.items():
            original = getattr(config, name)
            assert value == (list(original) if isinstance(original, tuple) else original)
    assert spacejam.SpaceJAMConfig.for_mode("quick").plain()["curriculum_groups"] == ["se2", "affine", "homography"]
    assert config_type(**{k: tuple(v) if isinstance(v, list) else v for k, v in plain.items()}) == config  # and back


def test_seed_is_reproducible():
    runtime.seed_everything(3)
    a = torch.rand(4)
    runtime.seed_everything(3)
    assert torch.equal(a, torch.rand(4))


def test_device_choice(monkeypatch):
    monkeypatch.delenv("CONGEAL_DEVICE", raising=False)
    assert runtime.get_device("cpu") == torch.device("cpu")
    # auto: CUDA first, then Apple MPS, then the CPU (availability faked, so every branch runs here)
    mps = getattr(torch.backends, "mps", None)
    for cuda, apple, expected in ((True, True, "cuda"), (False, True, "mps"), (False, False, "cpu")):
        monkeypatch.setattr(torch.cuda, "is_available", lambda cuda=cuda: cuda)
        if mps is not None:
            monkeypatch.setattr(mps, "is_available", lambda apple=apple: apple)
        elif apple:
            continue
        assert runtime.get_device().type == expected
        monkeypatch.setenv("CONGEAL_DEVICE", "cpu")
        assert runtime.get_device().type == "cpu"  # the environment variable, when no preference
        assert runtime.get_device("auto").type == expected  # an explicit preference wins over it
        monkeypatch.delenv("CONGEAL_DEVICE")
    with pytest.raises(ValueError, match="CUDA"):  # is_available() is False now
        runtime.get_device("cuda")


def test_run_label_names_mode_backbone_device():
    label = runtime.run_label("full", "efficientnet_lite0", "cpu")
    assert label == "full mode · efficientnet_lite0 · cpu"


def test_cli_routes_reach_the_application_and_evaluation_layers():
    import inspect

    from congealing import evaluation, mnist, registry

    assert set(cli.METHODS) == set(registry.METHODS) and "congeal3d" in cli.METHODS
    assert cli.SHAPE_METHODS == ("congeal3d",) == cli.DATASET_METHODS["lego"] == cli.DATASET_METHODS["lego-capture"]
    for name, method in registry.METHODS.items():
        parameters = inspect.signature(method.fit).parameters
        assert list(parameters)[:2] == ["images", "config"], name
        assert {"masks", "backbone", "device", "callback"} <= {p for p, v in parameters.items() if v.kind is inspect.Parameter.KEYWORD_ONLY}, name
        home = f"congealing.{'classical' if not method.features else name}"  # the method's module or package
        assert method.fit.__module__ == home or method.fit.__module__.startswith(home + "."), name
        assert ("shape" in parameters) == method.needs_shape, name
    for name, fit in evaluation.CUB_METHODS.items():
        required = [p for p in inspect.signature(fit).parameters.values() if p.default is inspect.Parameter.empty]
        assert fit.__module__.startswith("congealing.evaluation.") and len(required) <= 5, name
    assert set(cli.DATASET_METHODS["cub"]) == set(evaluation.CUB_METHODS)
    assert set(cli.DATASET_METHODS["mnist"]) == set(mnist.MNIST_METHODS)


def test_cli_unknown_method_and_bad_folder(tmp_path, capsys):
    assert cli.main(["align", str(tmp_path), "--method", "nope", "--out", str(tmp_path / "o")]) == 2
    assert "unknown method" in capsys.readouterr().err
    assert cli.main(["eval", "--dataset", "imagenet", "--method", "nn"]) == 2
    assert "unknown dataset" in capsys.readouterr().err


def test_cli_rejects_a_set_of_one(tmp_path, capsys):
    from PIL import Image

    Image.new("RGB", (16, 16)).save(tmp_path / "only.png")
    method = "entropy"
    assert cli.main(["align", str(tmp_path), "--method", method, "--out", str(tmp_path / "out")]) == 2
    assert "at least 2" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_console_script_runs_info(data_root):
    result = subprocess.run([sys.executable, "-m", "congealing.cli", "info", "--mode", "full", "--backbone", "efficientnet_lite0"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "mode:    full" in result.stdout and "efficientnet_lite0" in result.stdout


def test_provenance_names_its_source():
    record = runtime.provenance("congeal eval --dataset cub", "quick", "cpu")
    assert record["command"] == "congeal eval --dataset cub" and record["mode"] == "quick" and record["device"] == "cpu"
    library = Path(runtime.__file__).parent
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=library, capture_output=True, text=True)
    if head.returncode == 0:  # a git checkout: the library's own commit, marked when its files have changes
        changed = subprocess.run(["git", "status", "--porcelain", "--", "."], cwd=library, capture_output=True, text=True).stdout.strip()
        assert re.fullmatch(r"[0-9a-f]{40}", head.stdout.strip())
        assert record["commit"] == head.stdout.strip() + ("+dirty" if changed else "")
    else:
        assert record["commit"].startswith("unknown"), record["commit"]


def test_run_recorded_reuses_only_clean_records_and_reports_failures(tmp_path, monkeypatch):
    import hashlib
    import json

    argv = ["eval", "--dataset", "no-such-dataset", "--method", "nn"]
    with pytest.raises(RuntimeError, match="no-such-dataset"):
        runtime.run_recorded(argv, tmp_path)
    clean = "0123456789abcdef0123456789abcdef01234567"
    monkeypatch.setattr(runtime, "provenance", lambda *a, **k: {"commit": clean})
    path = tmp_path / (hashlib.sha1(" ".join(argv).encode()).hexdigest()[:16] + ".json")
    path.write_text(json.dumps({"answer": 42, "provenance": {"commit": clean}}))
    assert runtime.run_recorded(argv, tmp_path)["answer"] == 42  # same clean commit: reused, nothing run
    monkeypatch.setattr(runtime, "provenance", lambda *a, **k: {"commit": clean + "+dirty"})
    with pytest.raises(RuntimeError):  # a dirty tree never reuses: it reruns (and this command fails)
        runtime.run_recorded(argv, tmp_path)


def test_start_recorded_runs_jobs_side_by_side_with_a_share_of_the_cores(tmp_path, monkeypatch):
    import threading

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    both_running = threading.Barrier(2, timeout=10)  # broken (an error) unless two runs wait here at once
    seen = []

    def fake_run(argv, folder, threads):
        seen.append((argv[0], folder, threads))
        if argv[0] == "fails":
            raise RuntimeError("congeal fails failed")
        both_running.wait()
        return {"name": argv[0]}

    monkeypatch.setattr(runtime, "run_recorded", fake_run)
    runs = runtime.start_recorded({"a": ["a"], "b": ["b"], "bad": ["fails"]}, jobs=2, folder=tmp_path)
    assert runs["a"].result(timeout=20) == {"name": "a"} and runs["b"].result(timeout=20) == {"name": "b"}
    with pytest.raises(RuntimeError, match="fails failed"):
        runs["bad"].result(timeout=20)
    assert sorted(seen) == [(n, tmp_path, max(1, (os.cpu_count() or 1) // 2)) for n in ("a", "b", "fails")]
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # set by the user: every process gets it
    assert runtime.start_recorded({"bad": ["fails"]}, jobs=1)["bad"].exception(timeout=20) is not None
    assert seen[-1][2] == 3
    with pytest.raises(ValueError, match="jobs"):
        runtime.start_recorded({"a": ["a"]}, jobs=0)


def test_start_recorded_reports_a_real_failing_command(tmp_path):
    runs = runtime.start_recorded({"bad": ["eval", "--dataset", "no-such-dataset", "--method", "nn"]}, jobs=1, folder=tmp_path)
    with pytest.raises(RuntimeError, match="no-such-dataset"):
        runs["bad"].result(timeout=120)


def test_cli_passes_settings_down_without_rewriting_the_environment(tmp_path, monkeypatch, capsys):
    import os

    from congealing import evaluation, mnist

    monkeypatch.setenv("CONGEAL_MODE", "quick")
    monkeypatch.delenv("CONGEAL_DATA", raising=False)
    seen = []
    monkeypatch.setattr(mnist, "evaluate_mnist", lambda request: seen.append(request) or {"table": "ok"})
    assert cli.main(["eval", "--dataset", "mnist", "--method", "lsq", "--classes", "3,7", "--mode", "full", "--seed", "5", "--data", str(tmp_path)]) == 0
    assert seen == [evaluation.EvalRequest("lsq", classes=(3, 7), mode="full", seed=5, device=None, backbone=None, data=str(tmp_path))]
    assert os.environ["CONGEAL_MODE"] == "quick" and "CONGEAL_DATA" not in os.environ


def test_the_congeal3d_routes_get_typed_requests_and_leave_the_environment_alone(tmp_path, monkeypatch):
    import os

    from congealing import lego

    monkeypatch.setenv("CONGEAL_MODE", "quick")
    monkeypatch.delenv("CONGEAL_DATA", raising=False)
    seen = []
    record = lambda request: seen.append((dict(os.environ), request)) or {"table": "ok"}  # noqa: E731
    monkeypatch.setattr(lego, "evaluate_lego", record)
    monkeypatch.setattr(lego, "evaluate_lego_capture", record)
    for dataset in ("lego", "lego-capture"):
        assert cli.main(["eval", "--dataset", dataset, "--method", "congeal3d", "--mode", "full", "--seed", "3", "--data", str(tmp_path)]) == 0
    expected = lego.LegoRequest("congeal3d", mode="full", seed=3, device=None, backbone=None, data=str(tmp_path))
    assert [request for _, request in seen] == [expected, expected]
    for environment, _ in seen:  # not even while the benchmark runs
        assert environment["CONGEAL_MODE"] == "quick" and "CONGEAL_DATA" not in environment
