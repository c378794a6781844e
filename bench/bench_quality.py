"""Model quality measured through the service's runtime (FaceModel, onnxruntime) and judged by an attribute classifier.

- Classifier: validation ROC AUC of training/classifier.py's CNN, the judge of everything below.
- Reconstruction: MSE and PSNR of validation faces decoded from their z_mean.
- Sampling: Fréchet distance, in the classifier's penultimate features, between generated faces and the real
  validation faces, for `prior` and `trick` sampling at several temperatures (same noise for both, several seeds),
  next to two anchors with the same number of faces: real training faces (the floor) and their reconstructions.
- Edits: for each attribute, validation faces without it are moved +1, +2, +3 (in projection_std units, as /edit
  does) and faces with it -1, -2, -3; success = the classifier's probability crosses the attribute's threshold the
  right way (calibrated on reconstructions of training faces, see `judge_thresholds`), compared with the unedited
  reconstruction; side effects = mean |change| of the other attributes' probabilities; identity
  drift = mean absolute pixel difference (0-255) between the edited face and the unedited reconstruction.

    python -m bench.bench_quality --train-classifier          # models/celeba-64, runs/classifier-64
    python -m bench.bench_quality --model runs/sweep-kl5e-5/bundle --samples 500 --repeats 2

Writes JSON (--out), the tables as Markdown next to it (.md) and PNG figures into --figures.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import scipy.linalg
from sklearn.metrics import roc_curve

from bench.common import DEFAULT_DATA, FIGURES_DIR, RESULTS_DIR, Table, fmt, machine, write_report
from service.bundle import ModelBundle
from service.runtime import FaceModel, SamplingMode
from service.settings import DEFAULT_MODEL
from training.card import EDIT_ATTRIBUTES, grid
from training.classifier import AttributeClassifier, ClassifierConfig, default_out, train_classifier
from training.cli import DEFAULT_CACHE
from training.config import TrainConfig
from training.train import PreparedData, prepare_data

TEMPERATURES = (0.5, 0.75, 1.0, 1.25)
STRENGTHS = (1.0, 2.0, 3.0)
BATCH = 256
SAMPLE_GRID = 10


def batched(function: Callable[[np.ndarray], np.ndarray], inputs: np.ndarray) -> np.ndarray:
    """Apply `function` in batches of BATCH rows, so memory stays flat for any number of faces."""
    return np.concatenate([function(inputs[start : start + BATCH]) for start in range(0, len(inputs), BATCH)])


def z_means(model: FaceModel, faces: np.ndarray) -> np.ndarray:
    return batched(lambda batch: model.encode_pixels(batch).z_mean, faces)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets [N, D] (the FID formula).

    Tr sqrt(Ca Cb) is computed as the sum of square roots of the eigenvalues of the symmetric matrix
    sqrt(Ca) Cb sqrt(Ca), which has the same spectrum: exact, and stable where a general `sqrtm` of the
    non-symmetric product warns and loses accuracy (ReLU features with dead units make both covariances singular).
    """
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    values, vectors = scipy.linalg.eigh(cov_a)
    root_a = (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T
    trace_covmean = np.sum(np.sqrt(np.clip(scipy.linalg.eigvalsh(root_a @ cov_b @ root_a), 0, None)))
    return float(np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_covmean)


# ---- measurements -------------------------------------------------------------------------------------------------


def classifier_section(classifier: AttributeClassifier, attributes: Sequence[str]) -> dict[str, Any]:
    auc = classifier.report["validation_auc"]
    return {
        "attributes": {name: auc.get(name) for name in attributes},
        "mean_all": classifier.report["mean_validation_auc"],
        "all": auc,
        "train": classifier.report["train"],
        "validation": classifier.report["validation"],
        "epochs": classifier.config.epochs,
    }


def reconstruction(model: FaceModel, faces: np.ndarray) -> dict[str, Any]:
    """Per-image MSE on the [0, 1] scale (as the manifest's val_reconstruction_mse) and PSNR in dB."""
    decoded = batched(model.decode, z_means(model, faces))
    mse = np.mean((decoded.astype(np.float64) / 255.0 - faces.astype(np.float64) / 255.0) ** 2, axis=(1, 2, 3))
    psnr = 10 * np.log10(1.0 / np.maximum(mse, 1e-12))
    return {
        "images": len(faces),
        "mse": float(mse.mean()),
        "psnr_of_mean_mse": float(10 * np.log10(1.0 / mse.mean())),
        "mean_psnr": float(psnr.mean()),
        "manifest_mse": model.bundle.manifest.metrics.get("val_reconstruction_mse"),
        "psnr_per_image": psnr.tolist(),
    }


def sampling(
    model: FaceModel,
    classifier: AttributeClassifier,
    data: PreparedData,
    samples: int,
    repeats: int,
    temperatures: Sequence[float],
    seed: int,
) -> dict[str, Any]:
    """FD to the validation faces per (mode, temperature), mean and std over `repeats` seeds, plus two anchors."""
    _, real = classifier.predict(data.images[data.val])
    anchor_count = min(samples, len(data.train))
    fds: dict[str, list[float]] = {}
    for repeat in range(repeats):
        train_faces = data.images[np.random.default_rng(seed + repeat).choice(data.train, anchor_count, replace=False)]
        fds.setdefault("real training faces", []).append(frechet_distance(classifier.predict(train_faces)[1], real))
        rebuilt = batched(model.decode, z_means(model, train_faces))
        fds.setdefault("their reconstructions", []).append(frechet_distance(classifier.predict(rebuilt)[1], real))
        for mode in (SamplingMode.PRIOR, SamplingMode.TRICK):
            for temperature in temperatures:
                # The same seed for both modes: the same eps, only the sampling rule differs.
                z = model.sample_latents(samples, np.random.default_rng(seed + repeat), mode, temperature)
                generated = batched(model.decode, z)
                key = f"{mode.value} {temperature:g}"
                fds.setdefault(key, []).append(frechet_distance(classifier.predict(generated)[1], real))
        print(f"  FD repeat {repeat + 1}/{repeats} done")
    rows = [
        {"setting": key, "fd_mean": float(np.mean(v)), "fd_std": float(np.std(v)), "fd": v} for key, v in fds.items()
    ]
    return {
        "samples": samples,
        "anchor_faces": anchor_count,
        "real_validation_faces": len(data.val),
        "repeats": repeats,
        "temperatures": list(temperatures),
        "rows": rows,
    }


def judge_thresholds(
    model: FaceModel, classifier: AttributeClassifier, data: PreparedData, attributes: Sequence[str], max_faces: int
) -> dict[str, float]:
    """Per-attribute decision thresholds for judging the VAE's output, where the classifier's 0.5 is meaningless.

    The classifier learned from sharp photos; on the VAE's smooth faces its probabilities shift (at 0.5 it called
    96 % of reconstructed men "not male"). Each cut is set at Youden's J, where it best separates reconstructions
    of *training* faces with and without the attribute, so the validation faces judged below stay unseen.
    """
    assert data.labels is not None
    chosen = data.train[:max_faces]
    probabilities, _ = classifier.predict(batched(model.decode, z_means(model, data.images[chosen])))
    thresholds = {}
    for name in attributes:
        if name in classifier.attributes and name in data.dataset.attribute_names:
            truth = data.labels[chosen, data.dataset.attribute_names.index(name)] > 0
            fpr, tpr, cuts = roc_curve(truth, probabilities[:, classifier.column(name)])
            thresholds[name] = float(min(cuts[np.argmax(tpr - fpr)], 1.0))
    return thresholds


def success_rate(probabilities: np.ndarray, target: int, sign: float, threshold: float) -> float:
    """Share of faces judged to have the target attribute (sign > 0) or not to have it (sign < 0)."""
    has = probabilities[:, target] > threshold
    return float(np.mean(has if sign > 0 else ~has))


def edits(
    model: FaceModel,
    classifier: AttributeClassifier,
    data: PreparedData,
    attributes: Sequence[str],
    max_faces: int,
    thresholds: dict[str, float],
) -> dict[str, Any]:
    """Edit success, side effects and identity drift per attribute, direction and strength.

    Real photos are judged at the classifier's own 0.5; VAE output at the calibrated `thresholds`.
    """
    rows, skipped = [], {}
    labels = data.labels if data.labels is not None else np.zeros((len(data.images), 0), dtype=np.int8)
    for name in attributes:
        if name not in model.bundle.attributes:
            skipped[name] = "the bundle has no vector for it (see attributes_left_out in its manifest)"
            continue
        if name not in classifier.attributes or name not in data.dataset.attribute_names:
            skipped[name] = "not a labelled attribute of the data or the classifier"
            continue
        target = classifier.column(name)
        others = [i for i in range(len(classifier.attributes)) if i != target]
        column = data.dataset.attribute_names.index(name)
        for direction, sign in (("add", 1.0), ("remove", -1.0)):
            chosen = data.val[labels[data.val, column] == -sign][:max_faces]  # add: faces without it, and vice versa
            if len(chosen) == 0:
                continue
            faces = data.images[chosen]
            z = z_means(model, faces)
            unedited = batched(model.decode, z)
            p_unedited, _ = classifier.predict(unedited)

            row: dict[str, Any] = {
                "attribute": name,
                "direction": direction,
                "faces": len(chosen),
                "threshold": thresholds[name],
                "real": success_rate(classifier.predict(faces)[0], target, sign, 0.5),
                "unedited": success_rate(p_unedited, target, sign, thresholds[name]),
                "strengths": {},
            }
            for strength in STRENGTHS:
                edited = batched(model.decode, z + model.attribute_offset({name: sign * strength}))
                p, _ = classifier.predict(edited)
                row["strengths"][f"{sign * strength:+g}"] = {
                    "success": success_rate(p, target, sign, thresholds[name]),
                    "target_change": float(np.mean(p[:, target] - p_unedited[:, target])),
                    "side_effects": float(np.mean(np.abs(p[:, others] - p_unedited[:, others]))),
                    "drift": float(np.mean(np.abs(edited.astype(np.float32) - unedited.astype(np.float32)))),
                }
            rows.append(row)
    return {"strengths": list(STRENGTHS), "max_faces": max_faces, "rows": rows, "skipped": skipped}


# ---- report -------------------------------------------------------------------------------------------------------


def tables(report: dict[str, Any]) -> list[Table]:
    classifier = report["classifier"]
    result = [
        Table(
            "Attribute classifier (the judge): validation ROC AUC",
            ["attribute", "AUC"],
            [[name, fmt(auc, 3)] for name, auc in classifier["attributes"].items()]
            + [["mean of all 40", fmt(classifier["mean_all"], 3)]],
            f"CNN trained {classifier['epochs']} epochs on {classifier['train']} training faces, "
            f"measured on {classifier['validation']} validation faces.",
        )
    ]
    rec = report["reconstruction"]
    result.append(
        Table(
            "Reconstruction of validation faces (decoding z_mean)",
            ["faces", "MSE", "PSNR of mean MSE, dB", "mean per-face PSNR, dB", "manifest MSE"],
            [
                [
                    rec["images"],
                    fmt(rec["mse"], 5),
                    fmt(rec["psnr_of_mean_mse"], 2),
                    fmt(rec["mean_psnr"], 2),
                    fmt(rec["manifest_mse"], 5),
                ]
            ],
            "MSE per pixel and channel on the [0, 1] scale; PSNR = 10 log10(1 / MSE).",
        )
    )
    sampling_section = report["sampling"]
    by_setting = {row["setting"]: row for row in sampling_section["rows"]}

    def cell(key: str) -> str | None:
        row = by_setting.get(key)
        return None if row is None else f"{row['fd_mean']:.3g} ± {row['fd_std']:.2g}"

    temperatures = sampling_section["temperatures"]
    result.append(
        Table(
            "Sampling: Fréchet distance to real validation faces (classifier features; lower is better)",
            ["sampling", *(f"T = {t:g}" for t in temperatures)],
            [[mode, *(cell(f"{mode} {t:g}") for t in temperatures)] for mode in ("prior", "trick")]
            + [[f"anchor: {key}", cell(key)] for key in ("real training faces", "their reconstructions")],
            f"{sampling_section['samples']} generated faces per setting ({sampling_section['anchor_faces']} for the "
            f"anchors) against {sampling_section['real_validation_faces']} validation faces; mean ± std over "
            f"{sampling_section['repeats']} seeds, the same noise for prior and trick.",
        )
    )
    edit_rows = report["edits"]["rows"]
    signs = [("add", "+"), ("remove", "-")]
    for direction, sign in signs:
        rows = [r for r in edit_rows if r["direction"] == direction]
        keys = [f"{sign}{s:g}" for s in report["edits"]["strengths"]]
        result.append(
            Table(
                f"Edits, {direction}: share of faces the classifier judges "
                + ("to have the attribute" if direction == "add" else "not to have it"),
                ["attribute", "threshold", "faces", "real photo", "unedited", *keys],
                [
                    [
                        r["attribute"],
                        fmt(r["threshold"], 3),
                        r["faces"],
                        fmt(100 * r["real"], 0) + " %",
                        fmt(100 * r["unedited"], 0) + " %",
                    ]
                    + [fmt(100 * r["strengths"][k]["success"], 0) + " %" for k in keys]
                    for r in rows
                ],
                "Faces: validation faces labelled " + ("without" if direction == "add" else "with") + " it. "
                "'real photo' is the classifier's own verdict (p > 0.5) on the input; 'unedited' and the strengths "
                "judge VAE output at the threshold calibrated on reconstructed training faces (Youden's J).",
            )
        )
        result.append(
            Table(
                f"Edits, {direction}: side effects (mean |Δp| of the other 39 attributes) / identity drift "
                "(mean |Δpixel|, 0-255)",
                ["attribute", *keys],
                [
                    [r["attribute"]]
                    + [f"{r['strengths'][k]['side_effects']:.3f} / {r['strengths'][k]['drift']:.1f}" for k in keys]
                    for r in rows
                ],
            )
        )
    skipped = report["edits"]["skipped"]
    if skipped:
        result.append(Table("Attributes not measured", ["attribute", "why"], list(skipped.items())))
    return result


def headline(report: dict[str, Any]) -> str:
    rows = {row["setting"]: row for row in report["sampling"]["rows"]}
    prior, trick = rows.get("prior 1"), rows.get("trick 1")
    parts = []
    if prior is not None and trick is not None:
        best = min((k for k in rows if k.startswith(("prior", "trick"))), key=lambda k: rows[k]["fd_mean"])
        difference = trick["fd_mean"] - prior["fd_mean"]
        if abs(difference) <= trick["fd_std"] + prior["fd_std"]:
            verdict = "no clear difference across seeds"
        else:
            verdict = "the trick is better" if difference < 0 else "the trick is worse"
        parts.append(
            f"FD at T=1: trick {trick['fd_mean']:.3g} vs prior {prior['fd_mean']:.3g} "
            f"({100 * difference / prior['fd_mean']:+.0f} %, {verdict}); "
            f"lowest FD: {best} ({rows[best]['fd_mean']:.3g})"
        )
    successes = [
        f"{r['attribute']} {100 * r['strengths']['+2']['success']:.0f} % (unedited {100 * r['unedited']:.0f} %)"
        for r in report["edits"]["rows"]
        if r["direction"] == "add" and "+2" in r["strengths"]
    ]
    parts.append("edit success at +2: " + (", ".join(successes) or "not measured"))
    return "; ".join(parts) + "."


def draw_figures(report: dict[str, Any], samples: dict[str, np.ndarray], figures: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures.mkdir(parents=True, exist_ok=True)
    name = report["bundle"]["name"]
    paths = []

    def save(fig: Any, file: str) -> None:
        fig.tight_layout()
        paths.append(figures / file)
        fig.savefig(paths[-1], dpi=120)
        plt.close(fig)

    auc = report["classifier"]["all"]
    names = [n for n in auc if auc[n] is not None]
    fig, ax = plt.subplots(figsize=(6, 9))
    colors = ["C3" if n in report["classifier"]["attributes"] else "C0" for n in names]
    ax.barh(names, [auc[n] for n in names], color=colors)
    ax.axvline(0.5, color="grey", linestyle=":")
    ax.set_xlim(0.4, 1.0)
    ax.invert_yaxis()
    ax.set_xlabel("validation ROC AUC (red: attributes edited)")
    ax.set_title("attribute classifier", fontsize=10)
    save(fig, "quality_classifier_auc.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.hist(report["reconstruction"]["psnr_per_image"], bins=30)
    ax.axvline(report["reconstruction"]["mean_psnr"], color="C3", label="mean")
    ax.set_xlabel("PSNR of a validation face's reconstruction, dB")
    ax.set_ylabel("faces")
    ax.set_title(f"{name}: reconstruction MSE {report['reconstruction']['mse']:.4f}", fontsize=10)
    ax.legend()
    save(fig, "quality_reconstruction.png")

    sampling_section = report["sampling"]
    by_setting = {row["setting"]: row for row in sampling_section["rows"]}
    fig, ax = plt.subplots(figsize=(6, 4))
    temperatures = sampling_section["temperatures"]
    for mode in ("prior", "trick"):
        rows = [by_setting[f"{mode} {t:g}"] for t in temperatures]
        ax.errorbar(temperatures, [r["fd_mean"] for r in rows], [r["fd_std"] for r in rows], marker="o", label=mode)
    for key, style in (("real training faces", ":"), ("their reconstructions", "--")):
        ax.axhline(by_setting[key]["fd_mean"], color="grey", linestyle=style, label=f"anchor: {key}")
    ax.set_xlabel("temperature")
    ax.set_ylabel("Fréchet distance to validation faces")
    ax.set_title(f"{name}: prior vs sampling trick (lower is better)", fontsize=10)
    ax.legend(fontsize=8)
    save(fig, "quality_fd.png")

    picture = grid([samples["prior"], samples["trick"]], ["prior T=1", "trick T=1"])
    picture.save(figures / "quality_samples.png")
    paths.append(figures / "quality_samples.png")

    attributes = sorted({r["attribute"] for r in report["edits"]["rows"]})
    if attributes:
        fig, axes = plt.subplots(1, len(attributes), figsize=(3 * len(attributes), 3.2), squeeze=False, sharey=True)
        for ax, attribute in zip(axes[0], attributes, strict=True):
            for r in (r for r in report["edits"]["rows"] if r["attribute"] == attribute):
                keys = list(r["strengths"])
                success = [r["unedited"], *(r["strengths"][k]["success"] for k in keys)]
                has = success if r["direction"] == "add" else [1 - value for value in success]
                label = f"faces {'without' if r['direction'] == 'add' else 'with'} it (n={r['faces']})"
                ax.plot([0.0, *(float(k) for k in keys)], has, "o-", label=label)
            ax.axhline(0.5, color="grey", linestyle=":")
            ax.set_title(attribute, fontsize=10)
            ax.set_xlabel("edit strength (projection_std)")
            ax.legend(fontsize=7)
        axes[0][0].set_ylabel("share judged to have it")
        save(fig, "quality_edits.png")

        fig, (side_ax, drift_ax) = plt.subplots(1, 2, figsize=(11, 4))
        for index, attribute in enumerate(attributes):
            for r in (r for r in report["edits"]["rows"] if r["attribute"] == attribute):
                values = list(r["strengths"].values())
                style = "o-" if r["direction"] == "add" else "x--"
                label = f"{attribute} {r['direction']}"
                side_ax.plot(
                    report["edits"]["strengths"], [v["side_effects"] for v in values], style, color=f"C{index}"
                )
                drift_ax.plot(
                    report["edits"]["strengths"], [v["drift"] for v in values], style, color=f"C{index}", label=label
                )
        side_ax.set_ylabel("mean |Δp| of the other attributes")
        drift_ax.set_ylabel("mean |Δpixel| vs unedited reconstruction (0-255)")
        for ax in (side_ax, drift_ax):
            ax.set_xlabel("|edit strength| (projection_std)")
            ax.grid(True, alpha=0.3)
        drift_ax.legend(fontsize=7)
        side_ax.set_title("side effects (solid: add, dashed: remove)", fontsize=10)
        drift_ax.set_title("identity drift", fontsize=10)
        save(fig, "quality_side_effects.png")
    return paths


# ---- main ---------------------------------------------------------------------------------------------------------


def load_classifier(args: argparse.Namespace, bundle: ModelBundle, config: TrainConfig) -> AttributeClassifier:
    """The judge, trained first when asked to; it must frame and split faces exactly as the bundle's VAE did."""
    folder = args.classifier or default_out(bundle.image_size)
    if not (folder / "classifier.json").is_file():
        if not args.train_classifier:
            raise SystemExit(
                f"no classifier in {folder}: pass --train-classifier, or train one with\n"
                f"  python -m training.classifier --data {args.data} --image-size {bundle.image_size} "
                f"--val-fraction {config.val_fraction} --out {folder}"
            )
        settings = ClassifierConfig(
            image_size=bundle.image_size,
            crop=config.crop,
            val_fraction=config.val_fraction,
            max_images=args.classifier_max_images,
            epochs=args.classifier_epochs or ClassifierConfig().epochs,
        )
        return train_classifier(settings, args.data, folder, args.cache_dir)
    classifier = AttributeClassifier.load(folder)
    judged, expected = classifier.config, (bundle.image_size, config.crop, config.val_fraction)
    if (judged.image_size, judged.crop, judged.val_fraction) != expected:
        raise SystemExit(
            f"{folder}: classifier frames or splits faces differently from the bundle "
            f"(image size, crop, validation fraction {(judged.image_size, judged.crop, judged.val_fraction)} vs "
            f"{expected}); train a matching one with another --classifier folder"
        )
    return classifier


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="bundle folder (default: %(default)s)")
    parser.add_argument("--classifier", type=Path, help="classifier folder (default: runs/classifier-<image size>)")
    parser.add_argument("--train-classifier", action="store_true", help="train the classifier first if it is missing")
    parser.add_argument("--classifier-epochs", type=int, help="epochs when training it (default: the module's)")
    parser.add_argument("--classifier-max-images", type=int, help="images when training it (default: all)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="CelebA-layout folder (default: %(default)s)")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help="decoded-face cache (as training's)")
    parser.add_argument("--samples", type=int, default=1000, help="generated faces per FD setting (default: 1000)")
    parser.add_argument("--repeats", type=int, default=3, help="seeds per FD setting (default: 3)")
    parser.add_argument("--temperatures", type=float, nargs="+", default=list(TEMPERATURES))
    parser.add_argument("--attributes", nargs="+", default=list(EDIT_ATTRIBUTES), help="attributes to edit")
    parser.add_argument("--edit-faces", type=int, default=300, help="most faces per attribute and direction")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "quality.json", help="JSON (default: %(default)s)")
    parser.add_argument("--figures", type=Path, default=FIGURES_DIR, help="PNG folder (default: %(default)s)")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    bundle = ModelBundle.load(args.model)
    config = TrainConfig.from_manifest(bundle.manifest.training)
    data = prepare_data(config, args.data, args.cache_dir, skip_bad=False)
    if data.labels is None:
        raise SystemExit(f"{args.data} has no attribute labels; the edit evaluation needs them")
    classifier = load_classifier(args, bundle, config)
    model = FaceModel.load(args.model, threads=0, max_batch=max(args.samples, BATCH), max_strength=max(STRENGTHS))

    print(f"{bundle.name}: {len(data.val)} validation faces")
    report: dict[str, Any] = {
        "machine": machine(),
        "bundle": {
            "name": bundle.name,
            "path": str(args.model),
            "image_size": bundle.image_size,
            "z_dim": bundle.z_dim,
        },
        "classifier": classifier_section(classifier, args.attributes),
    }
    print("reconstruction")
    report["reconstruction"] = reconstruction(model, data.images[data.val])
    print("sampling")
    report["sampling"] = sampling(model, classifier, data, args.samples, args.repeats, args.temperatures, args.seed)
    print("edits")
    thresholds = judge_thresholds(model, classifier, data, args.attributes, max_faces=2000)
    report["edits"] = edits(model, classifier, data, args.attributes, args.edit_faces, thresholds)
    report["headline"] = headline(report)
    shown = {
        mode.value: model.decode(model.sample_latents(SAMPLE_GRID, np.random.default_rng(args.seed), mode, 1.0))
        for mode in (SamplingMode.PRIOR, SamplingMode.TRICK)
    }
    report["figures"] = [str(path) for path in draw_figures(report, shown, args.figures)]
    write_report(args.out, report, tables(report), report["headline"])


if __name__ == "__main__":
    main()
