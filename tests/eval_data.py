"""Writes tiny data sets in the exact standard formats, for the evaluate tests.

ImageNet (Kaggle layout, XML and CSV boxes, synset file), PASCAL VOC 2007 (Annotations,
ImageSets/Main/test.txt, JPEGImages, difficult flags) and COCO 2014 (instances JSON with
polygons, a crowd RLE, non-contiguous category ids, an image without annotations). Images
are 64 x 64 JPEGs, some grey (L) and CMYK. Also a python: model factory whose gradient
saliency is a known map per class (see :data:`MODEL_SOURCE`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

SIZE = 64  # images are SIZE x SIZE; the model input is 32 x 32 (no crop): 2 original px per input px

# The tiny linear model: logit_c = sum(W_c * x) over pixels and channels, so its input-gradient
# saliency (|d logit / dx|, max over channels) is |W_c| exactly, whatever the image. W_c is 1 on
# a rectangle of the 32 x 32 input with a peak of 2 at the rectangle's centre.
# RECTS[c] = (x0, y0, x1, y1) in input pixels (half-open); original pixels are twice these.
RECTS = {0: (2, 2, 12, 12), 1: (18, 18, 30, 30), 2: (2, 18, 14, 30)}

MODEL_SOURCE = '''
import torch
from torch import nn

RECTS = {rects!r}


class Linear(nn.Module):
    def __init__(self, classes):
        super().__init__()
        w = torch.zeros(classes, 32, 32)
        for c in range(classes):
            x0, y0, x1, y1 = RECTS.get(c % 3)
            w[c, y0:y1, x0:x1] = 1.0
            w[c, (y0 + y1) // 2, (x0 + x1) // 2] = 2.0
        self.register_buffer("w", w)

    def forward(self, x):
        return torch.einsum("nchw,khw->nk", x, self.w) / 100.0


PREP = {{"input_size": 32, "crop": "none", "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]}}


def build3():
    return Linear(3).eval(), PREP


def build20():
    return Linear(20).eval(), PREP
'''.format(rects=RECTS)


def write_model(folder: Path) -> Path:
    p = folder / "tiny_model.py"
    p.write_text(MODEL_SOURCE)
    return p


def orig_box(c: int) -> list[int]:
    """Class ``c``'s rectangle in original 64 px coordinates (half-open)."""
    x0, y0, x1, y1 = RECTS[c]
    return [2 * x0, 2 * y0, 2 * x1, 2 * y1]


def _image(path: Path, mode: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    rgb = Image.fromarray(rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8), "RGB")
    img = rgb.convert(mode) if mode != "RGB" else rgb
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else "PNG")


def _pascal_xml(filename: str, objects: list[tuple[str, list[int], int]], one_based: bool) -> str:
    """objects: (name, half-open box, difficult) -> inclusive pixel indices as the format stores them."""
    objs = []
    for name, (x0, y0, x1, y1), difficult in objects:
        off = 1 if one_based else 0
        objs.append(f"<object><name>{name}</name><pose>Unspecified</pose><truncated>0</truncated>"
                    f"<difficult>{difficult}</difficult><bndbox><xmin>{x0 + off}</xmin><ymin>{y0 + off}</ymin>"
                    f"<xmax>{x1 - 1 + off}</xmax><ymax>{y1 - 1 + off}</ymax></bndbox></object>")
    return (f"<annotation><folder>x</folder><filename>{filename}</filename><size><width>{SIZE}</width>"
            f"<height>{SIZE}</height><depth>3</depth></size>{''.join(objs)}</annotation>\n")


WNIDS = ["n01440764", "n01443537", "n01484850"]
# ImageNet val: (image stem, mode, class, boxes). Boxes on the class's rectangle -> localised;
# elsewhere -> not. Two boxes on val_3 (one right, one wrong).
IMAGENET = [
    ("ILSVRC2012_val_00000001", "RGB", 0, [orig_box(0)]),
    ("ILSVRC2012_val_00000002", "L", 1, [orig_box(1)]),
    ("ILSVRC2012_val_00000003", "CMYK", 2, [[40, 2, 62, 20], orig_box(2)]),
    ("ILSVRC2012_val_00000004", "RGB", 0, [[40, 40, 62, 62]]),
    ("ILSVRC2012_val_00000005", "RGB", 1, [orig_box(1)]),
]


def write_imagenet(root: Path, form: str = "xml") -> Path:
    """Kaggle layout; ``form`` "xml" (per-image files) or "csv" (LOC_val_solution.csv)."""
    img_dir = root / "ILSVRC" / "Data" / "CLS-LOC" / "val"
    for k, (stem, mode, c, boxes) in enumerate(IMAGENET):
        _image(img_dir / f"{stem}.JPEG", mode, k)
    (root / "LOC_synset_mapping.txt").write_text("".join(f"{w} class {i}\n" for i, w in enumerate(WNIDS)))
    if form == "xml":
        ann = root / "ILSVRC" / "Annotations" / "CLS-LOC" / "val"
        ann.mkdir(parents=True, exist_ok=True)
        for stem, _, c, boxes in IMAGENET:
            (ann / f"{stem}.xml").write_text(_pascal_xml(stem, [(WNIDS[c], b, 0) for b in boxes], one_based=False))
    else:
        lines = ["ImageId,PredictionString"]
        for stem, _, c, boxes in reversed(IMAGENET):  # the real file is not sorted either
            lines.append(stem + "," + " ".join(f"{WNIDS[c]} {b[0]} {b[1]} {b[2] - 1} {b[3] - 1}" for b in boxes))
        (root / "LOC_val_solution.csv").write_text("\n".join(lines) + "\n")
    return root


VOC_CLASSES = ("aeroplane", "bicycle", "bird")
# VOC test images: (id, mode, [(class, box, difficult)]). The model's saliency peak for class c
# is at the centre of orig_box(c % 3).
VOC = [
    ("000001", "RGB", [("aeroplane", orig_box(0), 0)]),                              # hit
    ("000002", "L", [("bicycle", [0, 0, 20, 20], 0), ("aeroplane", [36, 36, 64, 64], 1)]),  # miss, miss (difficult flag)
    ("000003", "CMYK", [("bird", orig_box(2), 0), ("bird", [40, 0, 64, 20], 0), ("bicycle", orig_box(1), 0)]),
]


def write_voc(root: Path) -> Path:
    base = root / "VOCdevkit" / "VOC2007"
    (base / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
    (base / "Annotations").mkdir(parents=True, exist_ok=True)
    for k, (stem, mode, objs) in enumerate(VOC):
        _image(base / "JPEGImages" / f"{stem}.jpg", mode, 10 + k)
        (base / "Annotations" / f"{stem}.xml").write_text(_pascal_xml(f"{stem}.jpg", objs, one_based=True))
    (base / "ImageSets" / "Main" / "test.txt").write_text("".join(s + "\n" for s, _, _ in VOC))
    return root


def write_coco(root: Path) -> Path:
    """Categories 1, 3, 7 (indices 0, 1, 2). Image 10: a polygon of category 1 on its rectangle
    (hit); image 20 (grey): a crowd RLE of category 3 far from its rectangle (miss) and a polygon
    of category 7 on its rectangle (hit); image 30: no annotation (no pair)."""
    imgs = root / "val2014"
    files = {10: ("COCO_val2014_000000000010.jpg", "RGB"), 20: ("COCO_val2014_000000000020.jpg", "L"),
             30: ("COCO_val2014_000000000030.jpg", "CMYK")}
    for iid, (name, mode) in files.items():
        _image(imgs / name, mode, iid)

    def poly(box: list[int]) -> list[list[float]]:
        x0, y0, x1, y1 = box
        return [[x0, y0, x1, y0, x1, y1, x0, y1]]

    crowd = np.zeros((SIZE, SIZE), dtype=np.uint8)
    crowd[0:10, 50:64] = 1  # rows 0-9, columns 50-63: top right, far from category 3's rectangle
    flat = crowd.T.reshape(-1)  # column-major runs, starting with a run of zeros
    counts, val, run = [], 0, 0
    for v in flat:
        if v == val:
            run += 1
        else:
            counts.append(run)
            val, run = v, 1
    counts.append(run)
    b0, b2 = orig_box(0), orig_box(2)
    anns = [
        {"id": 1, "image_id": 10, "category_id": 1, "iscrowd": 0, "segmentation": poly(b0),
         "bbox": [b0[0], b0[1], b0[2] - b0[0], b0[3] - b0[1]], "area": 1.0},
        {"id": 2, "image_id": 20, "category_id": 3, "iscrowd": 1, "segmentation": {"counts": counts, "size": [SIZE, SIZE]},
         "bbox": [50, 0, 14, 10], "area": 140.0},
        {"id": 3, "image_id": 20, "category_id": 7, "iscrowd": 0, "segmentation": poly(b2),
         "bbox": [b2[0], b2[1], b2[2] - b2[0], b2[3] - b2[1]], "area": 1.0},
    ]
    js = {"images": [{"id": iid, "file_name": n, "height": SIZE, "width": SIZE} for iid, (n, _) in files.items()],
          "annotations": anns,
          "categories": [{"id": 7, "name": "c7"}, {"id": 1, "name": "c1"}, {"id": 3, "name": "c3"}]}
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "annotations" / "instances_val2014.json").write_text(json.dumps(js))
    return root
