"""The ``congeal`` command: align a user's images, evaluate methods on benchmarks, show the setup.

    congeal info                                   # mode, device, data location, backbone
    congeal align DIR --method entropy --out OUT   # align a folder of images
    congeal eval --dataset mnist --method lsq      # measure a method on a benchmark

Every subcommand takes ``--mode quick|full`` (default: ``$CONGEAL_MODE``, else quick). This file
holds the command line only: it checks every argument before any work starts, turns the arguments
into typed requests and routes them to the application layer (:func:`congealing.align.align`,
:func:`congealing.align.align_congeal3d`) and the evaluation protocols
(:data:`congealing.evaluation.CUB_METHODS`, :func:`congealing.mnist.evaluate_mnist`,
:func:`congealing.lego.evaluate_lego`, :func:`congealing.lego.evaluate_lego_capture`). The
settings go down as arguments; the command does not rewrite the environment.

A user's mistake (a bad flag, an unreadable photo, an output folder that holds other files, a
checkpoint made for other images) ends with one line on stderr that says what is wrong and what to
do, and exit code 2 (:class:`congealing.errors.CongealError`); ``--debug`` or ``CONGEAL_DEBUG=1``
shows the traceback as well. The program never deletes or overwrites a file it did not write
(:mod:`congealing.report_folder`).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import traceback
import warnings
from pathlib import Path

from . import align, checkpoints, congeal3d, evaluation, lego, mnist, registry, report_folder, runtime
from .data import DATASETS, DatasetNotFoundError, cub_classes_on_disk, find_dataset, load_image_folder, load_masks
from .errors import CongealError, UsageError
from .features import load_backbone
from .files import write_atomically

__all__ = [
    "METHODS", "SHAPE_METHODS", "DATASETS_EVALUATED", "DATASET_METHODS", "PIXEL_METHODS", "RESUMABLE",
    "BACKBONE_NAMES", "SIZE_RANGE", "INPUT_SIZE_RANGE", "validate", "main",
]

#: ``congeal align --method NAME``: the registry's methods (:mod:`congealing.registry`); those that
#: need a canonical shape (3-D congealing) also take ``--shape`` or ``--cameras``.
METHODS: tuple[str, ...] = registry.names()
#: Methods that need ``--shape`` or ``--cameras`` (``needs_shape`` in the registry).
SHAPE_METHODS: tuple[str, ...] = registry.names(needs_shape=True)
#: ``congeal eval --dataset NAME``.
DATASETS_EVALUATED = ("mnist", "cub", "lego", "lego-capture")
#: The methods each benchmark can evaluate (``congeal eval --dataset D --method M``).
DATASET_METHODS: dict[str, tuple[str, ...]] = {"mnist": mnist.MNIST_METHODS, "cub": tuple(evaluation.CUB_METHODS), "lego": SHAPE_METHODS, "lego-capture": SHAPE_METHODS}
#: Methods that work on pixels and load no feature backbone.
PIXEL_METHODS = align.PIXEL_METHODS
#: Methods that train with a checkpoint that ``--resume`` continues.
RESUMABLE = align.RESUMABLE
BACKBONE_NAMES = ("auto", "dino_vits8", "dinov2_vits14", "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
SIZE_RANGE = (16, 2048)
#: The sides ``congeal eval --input-size`` accepts (pixels).
INPUT_SIZE_RANGE = (32, 1024)


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad command line as one :class:`UsageError` line (exit 2)."""

    def error(self, message):
        raise UsageError(f"{message}; see {self.prog} --help")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="congeal", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def common(p):
        p.add_argument("--mode", default=None, help="quick (CPU, minutes) or full (paper settings, GPU); default $CONGEAL_MODE or quick")
        p.add_argument("--device", default=None, help="cpu, cuda, cuda:N, mps or auto (default)")
        p.add_argument("--seed", default="0", help="random seed, a whole number from 0 to 2**32-1 (default 0)")
        p.add_argument("--backbone", default=None, help="dino_vits8, dinov2_vits14, efficientnet_lite0/1/2 or auto (methods on features only)")
        p.add_argument("--data", default=None, help="data folder (default $CONGEAL_DATA, else the download cache)")
        p.add_argument("--debug", action="store_true", help="show Python tracebacks for errors (also CONGEAL_DEBUG=1)")

    info = sub.add_parser("info", help="show mode, device, data location and the backbone that would be used")
    common(info)

    align_command = sub.add_parser("align", help="jointly align a folder of images")
    align_command.add_argument("folder", type=Path)
    align_command.add_argument("--method", required=True, help="one of: " + ", ".join(sorted(METHODS)))
    align_command.add_argument("--out", type=Path, required=True, help="the report folder: new, empty, or an earlier congeal report")
    align_command.add_argument("--size", default="256", help=f"side of the square working images in pixels ({SIZE_RANGE[0]}-{SIZE_RANGE[1]}, default 256)")
    align_command.add_argument("--resume", action="store_true", help="neural, spacejam: continue an interrupted run of the same images and settings")
    align_command.add_argument("--masks", type=Path, default=None, help="neural, spacejam, congeal3d: a folder of object masks, NAME.png per photo (white = object); default: alpha channels, else co-segmentation")
    align_command.add_argument("--skip-unreadable", action="store_true", help="leave out images that cannot be read, naming them, instead of stopping")
    align_command.add_argument("--shape", type=Path, default=None, help="congeal3d only: the canonical shape checkpoint (congealing.congeal3d.save_shape)")
    align_command.add_argument("--cameras", type=Path, default=None, help="congeal3d only: the photos' cameras, a transforms.json (instant-ngp, nerfstudio) or a COLMAP text folder; the shape is then fitted from the photos")
    common(align_command)

    evaluate = sub.add_parser("eval", help="evaluate a method on a benchmark and print a table")
    evaluate.add_argument("--dataset", required=True, help="one of: " + ", ".join(DATASETS_EVALUATED))
    evaluate.add_argument("--method", required=True)
    evaluate.add_argument("--classes", default=None, help="comma-separated class ids: CUB 1-200 (default 1,2,3), MNIST digits 0-9 (default all)")
    evaluate.add_argument("--json", type=Path, default=None, help="write the results here as JSON")
    evaluate.add_argument("--input-size", default=None, help="--method nn on cub only: resize the images to this many pixels before the backbone "
                          "(default: its own side), to compare with a method that reads its descriptors at that side (spacejam: 384 in quick mode)")
    common(evaluate)
    return parser


# ----------------------------------------------------------------------------- argument checks


def _whole_number(text: str, flag: str, low: int, high: int) -> int:
    try:
        value = int(str(text).strip())
    except ValueError:
        raise UsageError(f"{flag} {text!r} is not a whole number; give one from {low} to {high}") from None
    if not low <= value <= high:
        raise UsageError(f"{flag} {value} is out of range; give a whole number from {low} to {high}")
    return value


def _check_backbone(args) -> None:
    name = args.backbone or os.environ.get("CONGEAL_BACKBONE")
    if name and name.lower() not in BACKBONE_NAMES:
        source = "--backbone" if args.backbone else "CONGEAL_BACKBONE"
        raise UsageError(f"{source} {name!r} is not a backbone; use one of {', '.join(BACKBONE_NAMES)}")


def _writable(path: Path) -> bool:
    while not path.exists() and path != path.parent:
        path = path.parent
    return os.access(path, os.W_OK | os.X_OK)


def _check_json(path: Path | None) -> None:
    if path is None:
        return
    if path.is_dir():
        raise UsageError(f"--json {path} is a folder; give a file name, e.g. {path / 'results.json'}")
    if path.exists():
        try:
            ours = "provenance" in json.loads(path.read_text())
        except (OSError, ValueError, TypeError):
            ours = False
        if not ours:
            raise UsageError(f"--json {path} exists and was not written by congeal eval; choose a new file name (nothing was changed)")
    if not _writable(path.parent):
        raise UsageError(f"--json {path}: its folder is not writable; choose a place you can write to")


def _parse_classes(args) -> None:
    if args.classes is None:
        return
    items = [c.strip() for c in str(args.classes).split(",") if c.strip()]
    if not items:
        raise UsageError("--classes is empty; give comma-separated class ids, e.g. 1,2,3")
    if args.dataset.startswith("lego"):
        raise UsageError(f"--classes does not apply to --dataset {args.dataset} (one scene); leave it out")
    low, high = (0, 9) if args.dataset == "mnist" else (1, 200)
    ids = [_whole_number(c, "--classes", low, high) for c in items]
    if args.dataset == "cub":
        on_disk = cub_classes_on_disk(args.data)
        missing = [i for i in ids if on_disk and i not in on_disk]
        if missing:
            raise UsageError(
                f"--classes {','.join(map(str, missing))}: not in the CUB data on disk (it holds {', '.join(map(str, sorted(on_disk)))}); "
                "choose from those, or point CONGEAL_DATA at a full CUB_200_2011 folder"
            )
    args.classes = ",".join(map(str, ids))


checkpoint_path = align.checkpoint_path


def validate(args) -> None:
    """Check every argument of a parsed command line before any work is done, and complete it:
    ``mode``, ``seed`` (an int), ``device_obj``, ``classes`` (normalised ids), ``out`` and
    ``checkpoint`` (align), ``capture_cameras`` (align with ``--cameras``, read and checked by
    :func:`congealing.congeal3d.captures.check_capture`).

    A method that needs a canonical shape (:data:`SHAPE_METHODS`) needs ``--shape`` or
    ``--cameras``; the others refuse both.

    Args:
        args: the :class:`argparse.Namespace` of the ``congeal`` parser.

    Raises:
        UsageError: a bad argument; the message says what to give instead.
        congealing.errors.OutputFolderError: ``--out`` holds files the program did not write.
    """
    args.mode = runtime.get_mode(args.mode)
    args.seed = _whole_number(args.seed, "--seed", 0, 2**32 - 1)
    args.device_obj = runtime.get_device(args.device)
    if args.data is not None and not Path(args.data).is_dir():
        raise UsageError(f"--data {args.data} is not a folder; give the folder that holds mnist/, CUB_200_2011/ or nerf_synthetic/")
    _check_backbone(args)
    if args.command == "align":
        args.capture_cameras = None
        if args.method not in METHODS:
            raise UsageError(f"unknown method {args.method!r}; available: {', '.join(sorted(METHODS))}")
        if not args.folder.is_dir():
            raise UsageError(f"{args.folder} is not a folder of images; give the folder that holds your photos")
        args.size = _whole_number(args.size, "--size", *SIZE_RANGE)
        if args.method in PIXEL_METHODS and args.backbone:
            raise UsageError(f"--method {args.method} aligns pixels and uses no feature backbone; leave out --backbone (or use neural or spacejam)")
        if args.masks is not None and args.method in PIXEL_METHODS:
            raise UsageError(f"--method {args.method} aligns whole images and uses no masks; leave out --masks (or use neural, spacejam or congeal3d)")
        if args.masks is not None and not args.masks.is_dir():
            raise UsageError(f"--masks {args.masks} is not a folder; give the folder that holds one mask image per photo")
        needs_shape = args.method in SHAPE_METHODS
        if args.shape is not None and not needs_shape:
            raise UsageError(f"--shape is for --method {' or '.join(SHAPE_METHODS)} only; leave it out")
        if args.cameras is not None and not needs_shape:
            raise UsageError(f"--cameras is for --method {' or '.join(SHAPE_METHODS)} only; leave it out")
        if needs_shape and args.cameras is not None:
            if args.shape is not None:
                raise UsageError("--cameras fits the shape from the photos; leave out --shape (or --cameras, to pose the photos on a saved shape)")
            args.capture_cameras = congeal3d.check_capture(args.folder, args.cameras)
        elif needs_shape:
            if args.shape is None:
                raise UsageError(f"--method {args.method} needs --shape SHAPE (a canonical shape saved by congealing.congeal3d.save_shape, Chapter 6) or --cameras PATH (the capture's transforms.json or COLMAP folder)")
            if not args.shape.is_file():
                raise UsageError(f"--shape {args.shape} is not a file; give a shape saved by congealing.congeal3d.save_shape")
        args.out = report_folder.check_output_folder(args.out, args.folder)
        args.checkpoint = checkpoint_path(args.out, args.method)
        if args.resume:
            if args.method not in RESUMABLE:
                raise UsageError(f"--resume is for the trained methods ({', '.join(RESUMABLE)}); {args.method} has nothing to resume")
            if not args.checkpoint.exists() and not (args.out / "checkpoint.pt").exists():
                raise UsageError(f"--resume: there is no checkpoint to continue ({args.checkpoint.name} beside the report, or checkpoint.pt in it); run without --resume")
    elif args.command == "eval":
        if args.dataset not in DATASETS_EVALUATED:
            raise UsageError(f"unknown dataset {args.dataset!r}; available: {', '.join(sorted(DATASETS_EVALUATED))}")
        if args.method not in DATASET_METHODS[args.dataset]:
            raise UsageError(f"--method {args.method} cannot be evaluated on {args.dataset}; choose one of {', '.join(DATASET_METHODS[args.dataset])}")
        if args.dataset == "mnist" and args.backbone:
            raise UsageError("--dataset mnist aligns pixels and uses no feature backbone; leave out --backbone")
        if args.input_size is not None:
            if args.dataset != "cub" or args.method != "nn":
                raise UsageError("--input-size sets the nearest-neighbour baseline's input side on cub (--dataset cub --method nn); "
                                 "the methods read theirs from their configs: leave it out")
            args.input_size = _whole_number(args.input_size, "--input-size", *INPUT_SIZE_RANGE)
        _parse_classes(args)
        _check_json(args.json)


# ----------------------------------------------------------------------------- commands


def _align_request(args) -> align.AlignRequest:
    return align.AlignRequest(method=args.method, out=args.out, mode=args.mode, seed=args.seed, device=args.device,
                              backbone=args.backbone, resume=args.resume, checkpoint=args.checkpoint,
                              shape=args.shape, cameras=args.cameras, capture_cameras=args.capture_cameras)


def _run_alignment(images, args) -> None:
    """Align ``images`` with ``args.method`` and write the report to ``args.out``."""
    align.align(images, _align_request(args))


def _align(args) -> int:
    if args.checkpoint.exists() and not args.resume:
        print(f"congeal: note: starting again; {args.checkpoint.name} from an earlier run will be replaced (--resume continues it instead)", file=sys.stderr)
    images = load_image_folder(args.folder, size=args.size, min_images=2, max_images=None, skip_unreadable=args.skip_unreadable)
    if args.masks is not None:
        images.masks = load_masks(args.masks, images)
    if args.resume:  # refuse a checkpoint of other images now, before any features are computed
        path = args.checkpoint if args.checkpoint.exists() else args.out / "checkpoint.pt"
        checkpoints.check_fingerprint(checkpoints.load(path), images.fingerprint, path, keys=tuple(images.fingerprint))
    _run_alignment(images, args)
    print(f"wrote {args.out}")
    return 0


def _write_record(args, result: dict, argv, complete: bool = True) -> None:
    record = {k: v for k, v in result.items() if k != "table"}
    record["complete"] = complete
    record["provenance"] = runtime.provenance("congeal " + " ".join(argv if argv is not None else sys.argv[1:]), args.mode, args.device)
    write_atomically(args.json, lambda partial: partial.write_text(json.dumps(record, indent=2)))


def _eval_request(args) -> evaluation.EvalRequest:
    classes = tuple(int(c) for c in args.classes.split(",")) if args.classes else None
    return evaluation.EvalRequest(method=args.method, classes=classes, mode=args.mode, seed=args.seed, device=args.device,
                                  backbone=args.backbone, data=args.data, input_size=args.input_size)


def _lego_request(args) -> lego.LegoRequest:
    return lego.LegoRequest(method=args.method, mode=args.mode, seed=args.seed, device=args.device, backbone=args.backbone, data=args.data)


def _evaluate(args, argv) -> dict:
    """Run the benchmark ``args.dataset`` and return its JSON-ready record."""
    if args.dataset == "lego":
        return lego.evaluate_lego(_lego_request(args))
    if args.dataset == "lego-capture":
        return lego.evaluate_lego_capture(_lego_request(args))
    if args.dataset == "mnist":
        return mnist.evaluate_mnist(_eval_request(args))
    on_partial = None
    if args.json is not None:  # keep each finished class, whatever happens to the next
        on_partial = lambda partial: _write_record(args, partial, argv, complete=False)  # noqa: E731
    return evaluation.evaluate_cub(_eval_request(args), on_partial=on_partial)


def _eval(args, argv) -> int:
    result = _evaluate(args, argv)
    print(result.get("table", json.dumps(result, indent=2)))
    if args.json:
        _write_record(args, result, argv)
        print(f"wrote {args.json}")
    return 0


def _info(args) -> int:
    print(f"mode:    {args.mode}")
    print(f"device:  {args.device_obj}")
    for key in DATASETS:
        try:
            where = find_dataset(key, args.data, download=False)
        except DatasetNotFoundError:
            where = "not found (downloaded on first use)"
        print(f"data:    {key:15s} {where}")
    backbone = load_backbone(args.backbone)
    print(f"backbone: {backbone.name} ({backbone.title})")
    return 0


def _show_warning(message, category, filename, lineno, file=None, line=None):
    print(f"congeal: warning: {message}", file=sys.stderr)


def _interrupted(args) -> int:
    lines = ["congeal: interrupted"]
    if args.command == "align" and hasattr(args, "checkpoint"):
        staging = report_folder.staging_path(args.out)
        if (staging / report_folder.STAGING_MARKER).exists():
            shutil.rmtree(staging)  # our own half-written report
        lines.append(f"; the report at {args.out} was not changed")
        if args.checkpoint.exists():
            lines.append(f"; training so far is saved in {args.checkpoint}: run the same command with --resume to continue")
    print("".join(lines), file=sys.stderr)
    return 130


def main(argv=None) -> int:
    """The ``congeal`` command (README, "The `congeal` command"; Chapter 3, "The same from the
    command line"): parse, :func:`validate`, seed everything, then run ``info``, ``align`` or ``eval``.

    Args:
        argv: the arguments after ``congeal`` (None: ``sys.argv[1:]``).

    Returns:
        the exit code: 0 on success, 2 for a user's mistake (one line on stderr; the traceback too
        with ``--debug`` or ``CONGEAL_DEBUG=1``), 130 when interrupted (saying what was kept).

    Example:
        >>> main(["eval", "--dataset", "imagenet", "--method", "nn"])
        2
    """
    debug = os.environ.get("CONGEAL_DEBUG", "") not in ("", "0") or "--debug" in (argv if argv is not None else sys.argv[1:])
    args = None
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        try:
            args = _parser().parse_args(argv)
            validate(args)
            if args.mode == "full" and args.device_obj.type == "cpu" and args.command != "info":
                print("congeal: warning: full mode uses the papers' settings and expects a GPU; on this CPU it can take hours (--mode quick takes minutes)", file=sys.stderr)
            runtime.seed_everything(args.seed)
            if args.command == "info":
                return _info(args)
            if args.command == "align":
                return _align(args)
            return _eval(args, argv)
        except CongealError as error:
            if debug:
                traceback.print_exc()
            print("congeal: " + " ".join(str(error).split()), file=sys.stderr)  # one line, however the message was wrapped
            return 2
        except KeyboardInterrupt:
            if args is None:
                return 130
            return _interrupted(args)


if __name__ == "__main__":
    sys.exit(main())
