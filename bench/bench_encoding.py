"""PNG compression levels compared: milliseconds and bytes per answer image, side by side in one run.

A photo `/edit` with `output=photo` answers with the whole photo, so its PNG encoding is most of that request's time
at Pillow's default level (6). This measures PNG at each level against level 6 on the images the service returns:
a 64x64 face (a CelebA face resized), a 4x4 grid of them, a 640x480 phone-style photo and the same scene at
4000x3000 (testkit/phone_photos.py: a CelebA face in a scene; the large one is an enlarged scene, so smoother than a
real 12-megapixel photo, which compresses worse). Rounds interleave the levels; medians are reported.

    python -m bench.bench_encoding                 # from the repository root
    python -m bench.bench_encoding --repeats 3 --out bench/results/encoding.json
"""

from __future__ import annotations

import argparse
import io
import time
from pathlib import Path

import numpy as np
from PIL import Image

from bench.common import RESULTS_DIR, Table, fmt, machine, write_report
from service.core.imaging import PNG_COMPRESS_LEVEL, make_grid
from testkit.phone_photos import enlarged, face_files, phone_photo

LEVELS = (1, 3, 6)
REFERENCE = 6


def _images() -> dict[str, np.ndarray]:
    path = face_files(1, 5000)[0]
    scene = phone_photo(path, 0)
    with Image.open(path) as aligned:  # a CelebA face at the model's size, as /sample and /decode return them
        face = np.asarray(aligned.convert("RGB").resize((64, 64), Image.Resampling.LANCZOS))
    return {
        "face 64x64": face,
        "grid of 16 faces": make_grid(np.stack([face] * 16)),
        "photo 640x480": np.asarray(scene.image()),
        "photo 4000x3000": np.asarray(enlarged(scene).image()),
    }


def _encode(pixels: np.ndarray, level: int) -> tuple[float, int]:
    buffer = io.BytesIO()
    started = time.perf_counter()
    Image.fromarray(pixels, mode="RGB").save(buffer, format="PNG", compress_level=level)
    return (time.perf_counter() - started) * 1000, buffer.tell()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="rounds per image and level (default: 5)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "encoding.json", help="JSON results")
    args = parser.parse_args()
    images = _images()
    results: dict[str, dict[int, dict[str, float]]] = {}
    for name, pixels in images.items():
        times: dict[int, list[float]] = {level: [] for level in LEVELS}
        sizes: dict[int, int] = {}
        for _ in range(args.repeats):
            for level in LEVELS:
                ms, size = _encode(pixels, level)
                times[level].append(ms)
                sizes[level] = size
        results[name] = {level: {"ms": float(np.median(times[level])), "bytes": sizes[level]} for level in LEVELS}
        print(f"{name}: measured", flush=True)
    rows = []
    for name, by_level in results.items():
        reference = by_level[REFERENCE]
        for level in LEVELS:
            row = by_level[level]
            rows.append(
                [
                    name,
                    level if level != PNG_COMPRESS_LEVEL else f"{level} (the service)",
                    fmt(row["ms"], 2),
                    fmt(row["ms"] / reference["ms"], 2),
                    f"{row['bytes'] / 1024:.0f}",
                    fmt(row["bytes"] / reference["bytes"], 2),
                ]
            )
    table = Table(
        f"PNG encoding per compression level, medians of {args.repeats} interleaved rounds",
        ["image", "level", "ms", f"ms / level {REFERENCE}", "KB", f"bytes / level {REFERENCE}"],
        rows,
        note=f"Level {REFERENCE} is Pillow's default, and the service's before 2026-12-02.",
    )
    photo = results["photo 640x480"]
    headline = (
        f"a 640x480 photo: level {PNG_COMPRESS_LEVEL} {fmt(photo[PNG_COMPRESS_LEVEL]['ms'])} ms, level {REFERENCE} "
        f"{fmt(photo[REFERENCE]['ms'])} ms ({fmt(photo[PNG_COMPRESS_LEVEL]['ms'] / photo[REFERENCE]['ms'], 2)}x), "
        f"{fmt(photo[PNG_COMPRESS_LEVEL]['bytes'] / photo[REFERENCE]['bytes'], 2)}x the bytes."
    )
    report = {"machine": machine(), "repeats": args.repeats, "results": results}
    write_report(args.out, report, [table], headline)


if __name__ == "__main__":
    main()
