"""`facevae`: the service from the command line, through `facevae_client.Client`.

Pictures are written in the format their file name says (.png, .jpg, .webp); latents are JSON files as /encode
answers them. An error answer is printed with the API's detail and exits with status 1, and no output file is
written, so an error never lands in an image file.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from facevae_client.client import DEFAULT_RETRY_BUDGET, DEFAULT_URL, URL_VARIABLE, Client, default_url
from facevae_client.errors import FaceVAEError
from facevae_client.operations import ImageFormat
from facevae_client.types import Faces

#: File name suffix to the image format the server is asked for (so a large photo is not PNG-encoded first).
SUFFIX_FORMATS: dict[str, ImageFormat] = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".webp": "webp"}


def image_format(path: Path) -> ImageFormat:
    suffix = path.suffix.lower()
    if suffix not in SUFFIX_FORMATS:
        raise SystemExit(f"facevae: cannot tell the image format of {path}: use .png, .jpg or .webp")
    return SUFFIX_FORMATS[suffix]


def read_latent(path: Path) -> np.ndarray:
    """A latent from a JSON file: /encode's answer (its `code`), {"z": [...]}, or a bare list of numbers."""
    body = json.loads(path.read_text())
    if isinstance(body, dict):
        for key in ("code", "z"):
            if key in body:
                return np.asarray(body[key], dtype=np.float32)
        raise SystemExit(f"facevae: {path} has neither 'code' (from encode) nor 'z'")
    return np.asarray(body, dtype=np.float32)


def is_latent_file(path: Path) -> bool:
    return path.suffix.lower() == ".json"


def parse_strength(text: str) -> tuple[str, float]:
    name, equals, value = text.partition("=")
    try:
        if not equals or not name:
            raise ValueError
        return name.strip(), float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected NAME=STRENGTH such as Smiling=2, got {text!r}") from None


def save_faces(faces: Faces, path: Path, columns: int | None = None) -> None:
    """One face as it is, several as a grid (`columns` wide; default square)."""
    picture = faces.image if len(faces.images) == 1 else faces.grid(columns)
    if image_format(path) == "jpeg":
        picture = picture.convert("RGB")
    picture.save(path)


def _print_json(value: Any) -> None:
    json.dump(value, sys.stdout, indent=2)
    print()


# ---- commands -------------------------------------------------------------------------------------------------


def cmd_sample(client: Client, args: argparse.Namespace) -> None:
    faces = client.sample(args.n, seed=args.seed, mode=args.mode, temperature=args.temperature)
    save_faces(faces, args.output)
    print(f"seed {faces.seed}: {len(faces.images)} face(s) in {args.output}", file=sys.stderr)


def cmd_encode(client: Client, args: argparse.Namespace) -> None:
    encoding = client.encode(args.photo, seed=args.seed, align=args.align, face=args.face)
    text = json.dumps(encoding.to_json())
    if args.output is None:
        print(text)
    else:
        args.output.write_text(text + "\n")


def cmd_decode(client: Client, args: argparse.Namespace) -> None:
    save_faces(client.decode(read_latent(args.latent)), args.output)


def cmd_edit(client: Client, args: argparse.Namespace) -> None:
    strengths = dict(args.set)
    if len(strengths) != len(args.set):
        raise SystemExit("facevae: an attribute is given to --set more than once")
    if is_latent_file(args.source):
        source: Any = read_latent(args.source)
        photo_options: dict[str, Any] = {}
    else:
        source = args.source
        photo_options = {"align": args.align, "face": args.face, "detail": args.detail, "output": args.photo_output}
    # A whole photo comes in the output's format (PNG-encoding megapixels is slow); a 64x64 face comes lossless.
    encoding = image_format(args.output) if args.photo_output == "photo" else None
    faces = client.edit(source, strengths, keep=args.keep, steps=args.steps, image_format=encoding, **photo_options)
    save_faces(faces, args.output, columns=len(faces.images))


def cmd_interpolate(client: Client, args: argparse.Namespace) -> None:
    if is_latent_file(args.start) != is_latent_file(args.end):
        raise SystemExit("facevae interpolate: give two photos or two latent files (.json), not one of each")
    start, end = (read_latent(p) if is_latent_file(p) else p for p in (args.start, args.end))
    faces = client.interpolate(start, end, steps=args.steps, method=args.method, align=args.align, face=args.face)
    save_faces(faces, args.output, columns=len(faces.images))


def cmd_detect(client: Client, args: argparse.Namespace) -> None:
    detection = client.detect(args.photo)
    _print_json(
        {
            "width": detection.width,
            "height": detection.height,
            "faces": [
                {"box": list(f.box), "landmarks": [list(p) for p in f.landmarks], "score": f.score}
                for f in detection.faces
            ],
        }
    )


def cmd_attributes(client: Client, args: argparse.Namespace) -> None:
    for attribute in client.attributes():
        moved = f"  learned edit, {attribute.length_scale:g} x the class gap per unit" if attribute.learned else ""
        print(
            f"{attribute.name:20} AUC {attribute.auc:.3f}  strength "
            f"{attribute.strength_min:g} to {attribute.strength_max:g}{moved}"
        )


def cmd_metadata(client: Client, args: argparse.Namespace) -> None:
    _print_json(vars(client.metadata()))


# ---- the parser -----------------------------------------------------------------------------------------------


def _framing(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--align",
        choices=["auto", "none"],
        help="auto (the server's default): find the face and align it like the training crops; "
        "none: the photo is already a CelebA-style aligned crop",
    )
    parser.add_argument("--face", type=int, metavar="K", help="with several faces, use the K-th largest (0 = largest)")


def _output(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "-o", "--output", type=Path, required=True, help=f"{what}; the format follows the suffix: .png, .jpg or .webp"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="facevae",
        description="Sample, encode, decode, edit and interpolate faces with a running facevae service.",
        epilog="Errors are printed with the API's explanation and exit with status 1; no output file is written then.",
    )
    parser.add_argument(
        "--url",
        default=None,
        help=f"the service's base URL (default: ${URL_VARIABLE}, else {DEFAULT_URL})",
    )
    parser.add_argument(
        "--timeout", type=float, default=60.0, help="seconds to wait for the server on each read (default: 60)"
    )
    parser.add_argument(
        "--retry-budget",
        type=float,
        default=DEFAULT_RETRY_BUDGET,
        help="seconds to spend in total waiting out busy answers (503/429 with Retry-After) before giving up "
        f"(default: {DEFAULT_RETRY_BUDGET:g})",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, run: Callable[[Client, argparse.Namespace], None], text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=text, description=text)
        sub.set_defaults(run=run)
        return sub

    sample = command("sample", cmd_sample, "Random faces: one face, or with -n a grid of them.")
    sample.add_argument("-n", type=int, default=1, help="how many faces (default: 1; at most the server's max batch)")
    sample.add_argument("--seed", type=int, help="makes the faces reproducible (printed when not given)")
    sample.add_argument(
        "--mode",
        choices=["trick", "textbook", "prior"],
        help="where the latents are drawn from (default: the bundle's best-measured mode, see docs/api.md)",
    )
    sample.add_argument("--temperature", type=float, help="scales the noise (default 1; below 1 gives calmer faces)")
    _output(sample, "the face or grid to write")

    encode = command("encode", cmd_encode, "A photo's latent as JSON ('code' is the latent to decode or edit).")
    encode.add_argument("photo", type=Path, help="the photo (PNG, JPEG, WebP, ...); the face is found in it")
    encode.add_argument("--seed", type=int, help="makes the sampled 'z' reproducible")
    _framing(encode)
    encode.add_argument("-o", "--output", type=Path, help="JSON file to write (default: print it)")

    decode = command("decode", cmd_decode, "The face of a latent JSON file (from 'facevae encode', or {\"z\": [...]}).")
    decode.add_argument("latent", type=Path, help="JSON file: encode's answer (its 'code'), {\"z\": [...]} or a list")
    _output(decode, "the face to write (a grid for several latents)")

    edit = command(
        "edit", cmd_edit, "Edit a photo or a latent along attribute vectors ('facevae attributes' lists them)."
    )
    edit.add_argument("source", type=Path, help="a photo, or a latent JSON file (.json) from 'facevae encode'")
    edit.add_argument(
        "--set",
        action="append",
        type=parse_strength,
        required=True,
        metavar="NAME=STRENGTH",
        help="an attribute and its strength, e.g. Smiling=2 (1 = the average difference between faces with and "
        "without it, lengthened where +2 would not show; negative removes it); repeat for several",
    )
    edit.add_argument(
        "--keep",
        action="append",
        default=[],
        metavar="NAME",
        help="an attribute the edit must not change, e.g. --keep Male with --set Mustache=2; repeat for several",
    )
    edit.add_argument("--steps", type=int, help="odd, >= 3: a strip from -strength to +strength instead of one face")
    _framing(edit)
    edit.add_argument(
        "--detail",
        choices=["keep", "model"],
        help="photos only: keep (server default) the person's own detail plus the edit, or the model's decoding",
    )
    edit.add_argument(
        "--output-kind",
        dest="photo_output",
        choices=["face", "photo"],
        help="photos only: face (server default) = the 64x64 face square; photo = the whole photo with the edited "
        "face put back (use a .jpg output for large photos)",
    )
    _output(edit, "the edited face, photo or strip to write")

    interpolate = command("interpolate", cmd_interpolate, "A walk from one face to another, as one strip.")
    interpolate.add_argument("start", type=Path, help="the first photo, or a latent JSON file (.json)")
    interpolate.add_argument("end", type=Path, help="the last photo, or a latent JSON file (.json)")
    interpolate.add_argument("--steps", type=int, help="faces in the strip, both ends included (server default: 7)")
    interpolate.add_argument(
        "--method", choices=["slerp", "lerp"], help="slerp (default): along the great circle; lerp: a straight line"
    )
    _framing(interpolate)
    _output(interpolate, "the strip to write")

    detect = command("detect", cmd_detect, "Every face in a photo (box, landmarks, score) as JSON.")
    detect.add_argument("photo", type=Path, help="the photo")

    command("attributes", cmd_attributes, "The attributes 'edit' accepts, with their AUC and strength range.")
    command("metadata", cmd_metadata, "The served model: name, sizes, providers, service version.")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        with Client(args.url or default_url(), timeout=args.timeout, retry_budget=args.retry_budget) as client:
            args.run(client, args)
    except FaceVAEError as exc:
        print(f"facevae {args.command}: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    except OSError as exc:  # an unreadable photo or an unwritable output
        print(f"facevae {args.command}: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
