"""Why does an a0 score higher on validation than on held-out images? Near-duplicates or a shift?

    .venv/bin/python experiments/split_shift.py --family resnet50 --a0 outputs/a0/resnet50-imagenette-128/a0.pt

Imagenette's validation images are carved out of its train folder (ImageNet's train photos), the
held-out ones are its val folder (ImageNet's val photos). For both, this prints a0's FP32 top-1 and
how close each image is to its nearest training image: the cosine of a0's pooled features (the
classifier's input) and of 16x16 grey thumbnails (mean removed). If validation images sat closer
to training images (near-duplicates), the gap would be leakage; if the closeness is the same and
the top-1 differs at equal closeness, the two folders differ in kind (a shift), and a validation
target drawn from the train folder is optimistic for what a0 does on held-out photos.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from tabulate import tabulate
from torch import Tensor, nn

from rlnas.data.classification import ClassificationData, build_classification_data
from rlnas.supernet.a0 import build_a0

ROOT = Path(__file__).resolve().parents[1]
NEAR = 0.9  # "close" feature cosine, for top-1 at equal closeness


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--family", default="resnet50")
    p.add_argument("--a0", required=True, help="the a0 state dict (trained on the dataset's train split)")
    p.add_argument("--dataset", default=str(ROOT / "rlnas" / "conf" / "dataset" / "imagenette.yaml"))
    p.add_argument("--resolution", type=int, default=128)
    p.add_argument("--stem", choices=["imagenet", "cifar"], default="imagenet", help="a0's stem (model.kwargs.stem)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    return p.parse_args(argv)


def features_and_predictions(model: nn.Module, data: ClassificationData, split: str) -> tuple[Tensor, Tensor, Tensor]:
    """Unit-norm pooled features (the last Linear's input), predicted and true labels of ``split``."""
    if split == "train":  # stored images, eval-transformed a batch at a time
        images, labels, transform = data.train.images, data.train.labels, data.eval_transform
    else:  # eval_images: already eval-transformed
        (images, labels), transform = data.eval_images(split), (lambda batch: batch)
    captured: list[Tensor] = []
    head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    handle = head.register_forward_hook(lambda _m, inputs, _o: captured.append(inputs[0].detach()))
    predictions = []
    with torch.no_grad():
        for i in range(0, len(images), 256):
            predictions.append(model(data.normalize(transform(images[i:i + 256]))).argmax(1))
    handle.remove()
    return nn.functional.normalize(torch.cat(captured), dim=1), torch.cat(predictions), labels


def thumbnails(images: Tensor) -> Tensor:
    grey = nn.functional.adaptive_avg_pool2d(images.float().mean(1, keepdim=True), 16).flatten(1)
    return nn.functional.normalize(grey - grey.mean(1, keepdim=True), dim=1)


def nearest(queries: Tensor, pool: Tensor) -> np.ndarray:
    return torch.cat([(queries[i:i + 512] @ pool.T).max(1).values for i in range(0, len(queries), 512)]).numpy()


def split_row(name: str, feats: Tensor, correct: np.ndarray, thumbs: Tensor, train_feats: Tensor,
              train_thumbs: Tensor) -> dict[str, object]:
    near_feat, near_pixel = nearest(feats, train_feats), nearest(thumbs, train_thumbs)
    close = near_feat > NEAR
    return {"split": name, "images": len(correct), "top1": float(correct.mean()),
            "feature cos q10/q50/q90": np.quantile(near_feat, [0.1, 0.5, 0.9]).round(3).tolist(),
            f"top1 where cos > {NEAR}": float(correct[close].mean()) if close.any() else None,
            f"share cos > {NEAR}": float(close.mean()),
            "pixel cos q50/q90/q99": np.quantile(near_pixel, [0.5, 0.9, 0.99]).round(3).tolist(),
            "share pixel cos > 0.95": float((near_pixel > 0.95).mean())}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    data = build_classification_data(OmegaConf.load(args.dataset), args.resolution)
    model = build_a0(args.family, {"stem": args.stem}, args.a0)
    train_feats, _, _ = features_and_predictions(model, data, "train")
    train_thumbs = thumbnails(data.train.images)
    rows = []
    for split, subset in (("val", data.val), ("holdout", data.holdout)):
        feats, predicted, labels = features_and_predictions(model, data, split)
        rows.append(split_row(split, feats, (predicted == labels).numpy(), thumbnails(subset.images),
                              train_feats, train_thumbs))
    print(tabulate(rows, headers="keys", tablefmt="github"))
    print(f"a0 {args.a0} ({args.family}); train {len(data.train)} images; nearest = most similar training image")
    if args.out:
        args.out.write_text(json.dumps({"a0": args.a0, "family": args.family, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
