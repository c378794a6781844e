"""`python -m training` / `facevae-train`: train, fit, export and check model bundles."""

from __future__ import annotations

import argparse
import enum
import json
import logging
import os
import types
import typing
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from training.config import STRATEGIES, EditConfig, TrainConfig
from training.prepared import DEFAULT_CACHE


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field, typed and documented from the model itself."""
    group = parser.add_argument_group("model and training settings")
    for name, field in TrainConfig.model_fields.items():
        annotation: Any = field.annotation
        kwargs: dict[str, Any] = {"default": None, "help": f"{field.description} (default: {field.default})"}
        if isinstance(annotation, types.UnionType):  # `int | None`
            annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
        origin = typing.get_origin(annotation)
        if origin is tuple:
            kwargs.update(nargs="+", type=typing.get_args(annotation)[0])
        elif origin is typing.Literal:
            kwargs.update(choices=typing.get_args(annotation))
        elif isinstance(annotation, type) and issubclass(annotation, enum.Enum):
            kwargs.update(type=annotation, choices=list(annotation))
        else:
            kwargs["type"] = annotation
        group.add_argument("--" + name.replace("_", "-"), dest=name, **kwargs)


def _config_from(args: argparse.Namespace) -> TrainConfig:
    given = {name: getattr(args, name) for name in TrainConfig.model_fields if getattr(args, name) is not None}
    return TrainConfig(**given)


def _add_data_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, required=True, help="CelebA-layout folder or a plain folder of faces")
    parser.add_argument(
        "--cache-dir", type=Path, default=DEFAULT_CACHE, help="where decoded faces are cached (env FACEVAE_CACHE_DIR)"
    )
    parser.add_argument("--no-cache", action="store_true", help="decode the images again and cache nothing")
    parser.add_argument(
        "--skip-bad-images", action="store_true", help="leave out unreadable images (default: stop at the first one)"
    )


def _add_run_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run-dir", type=Path, help="checkpoints and history (default: runs/<name>)")
    parser.add_argument("--resume", action="store_true", help="continue from the run folder's last checkpoint")
    parser.add_argument(
        "--strategy",
        choices=STRATEGIES,
        default="default",
        help="tf.distribute strategy: one device, this machine's GPUs (mirrored), or the TF_CONFIG cluster "
        "(multi-worker); --batch-size stays the global batch (see training/distribute.py)",
    )
    parser.add_argument(
        "--logical-cpus",
        type=int,
        default=0,
        metavar="N",
        help="split the CPU into N logical devices (to try --strategy mirrored without GPUs)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="the whole job: fit, then export a verified bundle")
    _add_data_flags(train)
    train.add_argument("--out", type=Path, required=True, help="bundle folder to write")
    _add_run_flags(train)
    _add_config_flags(train)

    fit = commands.add_parser("fit", help="training only: checkpoints in a run folder")
    _add_data_flags(fit)
    _add_run_flags(fit)
    _add_config_flags(fit)

    export = commands.add_parser("export", help="bundle a run's best checkpoint (statistics need the data)")
    _add_data_flags(export)
    export.add_argument("--run-dir", type=Path, required=True, help="a run folder written by fit or train")
    export.add_argument("--out", type=Path, required=True, help="bundle folder to write")

    card = commands.add_parser("card", help="model-card figures (card/*.png) and figures of merit for a bundle")
    _add_data_flags(card)
    card.add_argument("--bundle", type=Path, required=True, help="bundle folder written by train or export")

    edits = commands.add_parser(
        "edits",
        help="train learned attribute edits through a bundle's decoder (minutes) and add them to it (editor.onnx)",
    )
    _add_data_flags(edits)
    edits.add_argument("--bundle", type=Path, required=True, help="bundle folder to add the editor to, in place")
    edits.add_argument(
        "--guide-dir",
        type=Path,
        help="the first guide classifier edits are trained against (default: runs/edit-guide-<image size>; the "
        "others of guide_seeds beside it as <folder>-s<seed>; each trained there first when missing)",
    )
    edits.add_argument(
        "--held-out-dir",
        type=Path,
        help="the first of the classifiers that calibrate each edit's length, never trained against (default: "
        "runs/edit-guide-<image size>-s<seed> for each of held_out_seeds; given, the others beside it as "
        "<folder>-s<seed>; each trained there first when missing)",
    )
    edits.add_argument("--steps", type=int, help=f"training steps (default: {EditConfig().steps})")
    edits.add_argument(
        "--guide-epochs",
        type=int,
        help=f"epochs of the guide when it is trained (default: {EditConfig().guide_epochs})",
    )
    edits.add_argument(
        "--attributes", nargs="+", help=f"attributes to learn (default: {' '.join(EditConfig().attributes)})"
    )
    edits.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        type=_field_value,
        metavar="FIELD=VALUE",
        help="any other setting of training.config.EditConfig, the value as JSON (repeatable), e.g. --set "
        "keep_weight=24 --set target_logit=1",
    )

    upgrade = commands.add_parser(
        "upgrade",
        help="measure a bundle's landmark template again with this detector (format 3, or another detector's) and "
        "make it the current format",
    )
    _add_data_flags(upgrade)
    upgrade.add_argument("--bundle", type=Path, required=True, help="bundle folder to upgrade in place")

    rewrite = commands.add_parser(
        "rewrite",
        help="rewrite a bundle's ONNX graphs as this version exports them (outputs checked unchanged), no Keras model",
    )
    rewrite.add_argument("--bundle", type=Path, required=True, help="bundle folder to rewrite in place")

    quantize = commands.add_parser(
        "quantize",
        help="write an int8 sibling of a float32 bundle (onnxruntime static QDQ, calibrated on training faces and "
        "codes), verified and measured against it",
    )
    quantize.add_argument("--bundle", type=Path, required=True, help="the float32 bundle (left unchanged)")
    quantize.add_argument("--out", type=Path, required=True, help="the int8 bundle folder to write, e.g. B-int8")
    quantize.add_argument(
        "--data",
        type=Path,
        default=Path(__file__).resolve().parents[1].parent / "shared" / "data" / "celeba_subset",
        help="the bundle's training data, for calibration faces (training split) and the deviation (validation)",
    )
    quantize.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help="decoded-face cache")
    quantize.add_argument("--faces", type=int, default=256, help="training faces calibrating the encoder")
    quantize.add_argument("--codes", type=int, default=256, help="sampler codes calibrating the decoder (+ the faces')")
    quantize.add_argument("--method", choices=("minmax", "entropy", "percentile"), default="minmax")
    quantize.add_argument("--seed", type=int, default=0)

    check = commands.add_parser("check", help="verify a bundle with the service's loader and print its summary")
    check.add_argument("bundle", type=Path)
    return parser


def _field_value(text: str) -> tuple[str, Any]:
    """FIELD=VALUE with VALUE read as JSON (a bare word stays a string)."""
    field, equals, value = text.partition("=")
    if not equals or field not in EditConfig.model_fields:
        raise argparse.ArgumentTypeError(f"expected FIELD=VALUE with FIELD one of {', '.join(EditConfig.model_fields)}")
    try:
        return field, json.loads(value)
    except json.JSONDecodeError:
        return field, value


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.command == "check":
        from service.core.bundle import ModelBundle

        bundle = ModelBundle.load(args.bundle)
        metrics = bundle.manifest.metrics
        print(
            f"{bundle.name}: {bundle.image_size}px, z={bundle.z_dim}, {len(bundle.attributes)} attributes, "
            f"val MSE {metrics.get('val_reconstruction_mse')}, parity {bundle.manifest.parity.get('max_abs_diff')}"
        )
        return 0

    # TensorFlow is imported only for the commands that need it, and told to keep its C++ logs down.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    for noisy in ("tf2onnx", "tensorflow"):  # tf.distribute logs every all-reduce at INFO
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from training import export as exporting
    from training import train as training
    from training.prepared import prepare_data

    if args.command == "rewrite":
        print(", ".join(exporting.rewrite_graphs(args.bundle)) or "nothing to rewrite")
        return 0
    if args.command == "quantize":
        from service.core.bundle import ModelBundle
        from training.quantize import quantize_bundle

        source = ModelBundle.load(args.bundle)
        data = prepare_data(TrainConfig.from_manifest(source.manifest.training), args.data, args.cache_dir, False)
        result = quantize_bundle(
            args.bundle,
            args.out,
            data.images[data.train],
            data.images[data.val],
            faces=args.faces,
            codes=args.codes,
            method=args.method,
            seed=args.seed,
        )
        print(f"{result.name}: {result.precision}, {json.dumps(result.manifest.quantization.deviation)}")
        return 0
    cache = None if args.no_cache else args.cache_dir
    if args.command == "card":
        from service.core.bundle import ModelBundle
        from training.card import write_card_figures

        bundle = ModelBundle.load(args.bundle)
        config = TrainConfig.from_manifest(bundle.manifest.training)
        write_card_figures(args.bundle, prepare_data(config, args.data, cache, args.skip_bad_images))
        return 0
    if args.command == "edits":
        from service.core.bundle import ModelBundle
        from training.edits import fit_edits, guide_folders, seed_folder

        bundle = ModelBundle.load(args.bundle)
        config = TrainConfig.from_manifest(bundle.manifest.training)
        given = {"steps": args.steps, "attributes": args.attributes, "guide_epochs": args.guide_epochs}
        try:
            settings = EditConfig(
                **dict(args.overrides), **{key: value for key, value in given.items() if value is not None}
            )
        except (ValidationError, TypeError) as error:
            parser.error(f"edits: {error}")
        default_guide_dir = Path("runs") / f"edit-guide-{bundle.image_size}"
        guide_dir = args.guide_dir or default_guide_dir
        held_out_dirs = (
            guide_folders(args.held_out_dir, settings.held_out_seeds)
            if args.held_out_dir
            else [seed_folder(default_guide_dir, seed) for seed in settings.held_out_seeds]
        )
        data = prepare_data(config, args.data, cache, args.skip_bad_images)
        fit_edits(args.bundle, config, data, settings, guide_dir, held_out_dirs)
        return 0
    if args.command == "upgrade":
        from service.core.bundle import MANIFEST_FILE
        from training.template import upgrade

        manifest = json.loads((args.bundle / MANIFEST_FILE).read_text(encoding="utf-8"))
        config = TrainConfig.from_manifest(manifest["training"])
        upgrade(args.bundle, prepare_data(config, args.data, cache, args.skip_bad_images))
        return 0
    if args.command == "export":
        config, vae = training.load_run(args.run_dir)
        data = prepare_data(config, args.data, cache, args.skip_bad_images)
        summary = training.run_summary(args.run_dir)
        exporting.build_bundle(config, vae, data, summary, args.out)
        return 0

    from training.distribute import make_placement

    placement = make_placement(args.strategy, args.logical_cpus)  # before any other TensorFlow work
    config = _config_from(args)
    run_dir = args.run_dir or Path("runs") / config.name
    data = prepare_data(config, args.data, cache, args.skip_bad_images)
    summary = training.fit(config, data, run_dir, args.resume, placement)
    if args.command == "train" and placement.is_chief:  # the other workers' part ends with the training
        _, vae = training.load_run(run_dir)
        exporting.build_bundle(config, vae, data, summary, args.out)
    return 0
