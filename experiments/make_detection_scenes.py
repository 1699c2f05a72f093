"""Build the detection scenes (``dataset=scenes``) from the Imagenette photos: COCO-format
``instances_<split>.json`` + JPEGs (see :mod:`rlnas.data.scenes` for what a scene is and how its
boxes are defined).

    make scenes                                   # = the command below, after make data
    .venv/bin/python experiments/make_detection_scenes.py --source data/imagenette-128 \\
        --out data/scenes-300 --train 10000 --val 2000 --holdout 2000 --seed 0 --workers 2

Rerunning with the same settings and photos only checks the existing files (``--force``
rebuilds); the same seed gives byte-identical JSON and images, whatever ``--workers``.
"""

from __future__ import annotations

import argparse
import json
import time

from rlnas.data.scenes import DEFAULT_COUNTS, SceneSpec, build_scenes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default="data/imagenette-128", help="ImageFolder with train/ and val/")
    parser.add_argument("--out", default="data/scenes-300")
    for split, count in DEFAULT_COUNTS.items():
        parser.add_argument(f"--{split}", type=int, default=count, help=f"{split} scenes (default {count})")
    parser.add_argument("--size", type=int, default=SceneSpec.size, help="scene side in pixels")
    parser.add_argument("--min-side", type=float, default=SceneSpec.min_side)
    parser.add_argument("--max-side", type=float, default=SceneSpec.max_side)
    parser.add_argument("--max-occlusion", type=float, default=SceneSpec.max_occlusion)
    parser.add_argument("--format", choices=("jpg", "png"), default=SceneSpec.image_format)
    parser.add_argument("--quality", type=int, default=SceneSpec.quality, help="JPEG quality")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    spec = SceneSpec(size=args.size, min_side=args.min_side, max_side=args.max_side,
                     max_occlusion=args.max_occlusion, image_format=args.format, quality=args.quality)
    counts = {split: getattr(args, split) for split in DEFAULT_COUNTS}
    start = time.perf_counter()
    paths = build_scenes(args.source, args.out, counts, spec, seed=args.seed, workers=args.workers,
                         progress=not args.no_progress, force=args.force)
    for split, path in paths.items():
        data = json.loads(path.read_text())
        print(f"{split}: {len(data['images'])} scenes, {len(data['annotations'])} objects -> {path}")
    print(f"done in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
