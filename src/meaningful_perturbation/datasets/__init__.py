"""Loaders for the standard evaluation data sets (ImageNet val boxes, PASCAL VOC 2007, COCO 2014).

Each loader is a generator of :class:`EvalRecord` dicts, one per (image, class) pair, read
from the annotation files one image at a time (no image is decoded, only the header of those whose XML gives a
size, to check it; no list of all records is built), so ``mperturb evaluate`` can stream 50,000 images into its manifest.

Record keys:

* ``path``: the image file (absolute); ``image``: the image id (file stem / COCO id).
* ``target``: class index in the model's output order; ``class``: its name / WordNet id.
* ``boxes``: ground-truth boxes of that class, ``[[x0, y0, x1, y1], ...]`` half-open pixel-edge
  coordinates of the original image (see :mod:`meaningful_perturbation.metrics.weak_localisation`).
* ``segments`` (COCO only): the class's instance segmentations as in the JSON (polygons or RLE).
* ``classes_in_image``: how many distinct classes the image holds (the pointing game's
  "difficult" subset needs it).
* ``size``: ``[height, width]`` from the annotation, or ``None`` where the format has none.
"""

from .coco import COCO_ANNOTATIONS, iter_coco
from .imagenet import iter_imagenet, read_synsets
from .voc import VOC_CLASSES, iter_voc

__all__ = ["iter_imagenet", "read_synsets", "iter_voc", "VOC_CLASSES", "iter_coco", "COCO_ANNOTATIONS"]
