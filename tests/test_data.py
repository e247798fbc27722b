"""Contracts of the ShapeEvidence generator (DESIGN.md §4)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("skimage")
pytest.importorskip("sklearn")

from meaningful_perturbation.data import (  # noqa: E402
    CLASSES,
    MEAN,
    STD,
    TEST_PHOTOS,
    TRAIN_PHOTOS,
    ShapeEvidence,
    available_photos,
    make_shape_evidence,
    normalize,
)
from meaningful_perturbation.data import backgrounds  # noqa: E402
from meaningful_perturbation.errors import InputError  # noqa: E402

FIELDS = ("images", "labels", "masks", "distractors", "counterfactuals")


@pytest.fixture(scope="module")
def ds() -> ShapeEvidence:
    return make_shape_evidence(120, size=64, split="test", seed=3)


def test_shapes_dtypes_and_ranges(ds: ShapeEvidence) -> None:
    n, s = 120, 64
    assert ds.images.shape == ds.counterfactuals.shape == (n, 3, s, s)
    assert ds.images.dtype == ds.counterfactuals.dtype == np.float32
    assert ds.labels.shape == (n,) and ds.labels.dtype == np.int64
    assert ds.masks.shape == ds.distractors.shape == (n, s, s)
    assert ds.masks.dtype == ds.distractors.dtype == np.bool_
    assert ds.images.min() >= 0.0 and ds.images.max() <= 1.0
    assert ds.counterfactuals.min() >= 0.0 and ds.counterfactuals.max() <= 1.0
    assert ds.classes == CLASSES == ("disc", "square", "triangle", "plus", "ring", "x")
    assert (ds.split, ds.size, ds.seed, len(ds)) == ("test", s, 3, n)
    assert len(ds.backgrounds) == n


def test_same_seed_is_bitwise_identical() -> None:
    a = make_shape_evidence(20, size=64, split="train", seed=7)
    b = make_shape_evidence(20, size=64, split="train", seed=7)
    for f in FIELDS:
        assert np.array_equal(getattr(a, f), getattr(b, f)), f
    assert a.backgrounds == b.backgrounds


def test_different_seed_or_split_differs() -> None:
    a = make_shape_evidence(10, size=64, split="train", seed=0)
    b = make_shape_evidence(10, size=64, split="train", seed=1)
    c = make_shape_evidence(10, size=64, split="test", seed=0)
    assert not np.array_equal(a.images, b.images)
    assert not np.array_equal(a.masks, b.masks)
    assert not np.array_equal(a.images, c.images)


def test_smaller_draw_is_prefix_of_larger() -> None:
    a = make_shape_evidence(5, size=64, split="test", seed=2)
    b = make_shape_evidence(12, size=64, split="test", seed=2)
    for f in FIELDS:
        assert np.array_equal(getattr(a, f), getattr(b, f)[:5]), f


def test_mask_is_exactly_where_image_and_counterfactual_differ(ds: ShapeEvidence) -> None:
    differ = (ds.images != ds.counterfactuals).any(axis=1)
    assert np.array_equal(differ, ds.masks)


def test_mask_is_one_uniform_colour(ds: ShapeEvidence) -> None:
    for i in range(len(ds)):
        pix = ds.images[i][:, ds.masks[i]]  # (3, k)
        assert np.all(pix == pix[:, :1])


def test_masks_non_empty_and_inside_the_image(ds: ShapeEvidence) -> None:
    area = ds.masks.sum(axis=(1, 2))
    assert (area > 0).all()
    # the shape never touches the border (edge margin of 2% of the side)
    border = ds.masks[:, 0, :] | ds.masks[:, -1, :] | ds.masks[:, :, 0] | ds.masks[:, :, -1]
    assert not border.any()
    # sizes span the documented range: shapes inscribed in circles of 14-30% of the side
    assert area.max() <= np.pi * (0.15 * 64 + 1) ** 2


def test_distractors_disjoint_from_shape_and_drawn_in_both_images(ds: ShapeEvidence) -> None:
    assert not (ds.masks & ds.distractors).any()
    assert ds.distractors.any(axis=(1, 2)).sum() > len(ds) // 2  # 0-2 per image, most have one
    # outside the class shape, image and counterfactual are identical (distractors included)
    outside = ~ds.masks[:, None].repeat(3, axis=1)
    assert np.array_equal(ds.images[outside], ds.counterfactuals[outside])


def test_labels_cover_all_classes(ds: ShapeEvidence) -> None:
    counts = np.bincount(ds.labels, minlength=len(CLASSES))
    assert counts.shape == (len(CLASSES),) and (counts > 0).all()


def test_train_and_test_backgrounds_are_disjoint() -> None:
    assert not set(TRAIN_PHOTOS) & set(TEST_PHOTOS)
    train = make_shape_evidence(80, size=64, split="train", seed=0)
    test = make_shape_evidence(80, size=64, split="test", seed=0)
    photos_train = {b for b in train.backgrounds if b.startswith("photo:")}
    photos_test = {b for b in test.backgrounds if b.startswith("photo:")}
    assert photos_train and photos_test
    assert not photos_train & photos_test
    assert {b[6:] for b in photos_train} <= set(TRAIN_PHOTOS)
    assert {b[6:] for b in photos_test} <= set(TEST_PHOTOS)
    assert any(b.startswith("noise:") for b in train.backgrounds + test.backgrounds)


def test_bundled_photos_load_offline() -> None:
    # Every listed photo ships inside the scikit-image / scikit-learn wheels.
    assert available_photos("train") == TRAIN_PHOTOS
    assert available_photos("test") == TEST_PHOTOS


def test_size_224_gives_the_same_picture_at_higher_resolution() -> None:
    small = make_shape_evidence(6, size=64, split="test", seed=4)
    big = make_shape_evidence(6, size=224, split="test", seed=4)
    assert big.images.shape == (6, 3, 224, 224)
    assert np.array_equal(small.labels, big.labels) and small.backgrounds == big.backgrounds
    assert np.array_equal((big.images != big.counterfactuals).any(axis=1), big.masks)
    # shape area as a fraction of the image agrees up to rasterisation
    frac_small = small.masks.mean(axis=(1, 2))
    frac_big = big.masks.mean(axis=(1, 2))
    np.testing.assert_allclose(frac_small, frac_big, rtol=0.25, atol=2e-3)
    # mask centroids agree within a pixel of the small image
    for i in range(6):
        cs = np.argwhere(small.masks[i]).mean(0) / 64
        cb = np.argwhere(big.masks[i]).mean(0) / 224
        assert np.abs(cs - cb).max() < 1.5 / 64


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"n": 0}, "n"),
        ({"n": -3}, "n"),
        ({"n": 2.5}, "n"),
        ({"n": True}, "n"),
        ({"n": 2, "size": 16}, "size"),
        ({"n": 2, "size": 64.0}, "size"),
        ({"n": 2, "split": "val"}, "split"),
        ({"n": 2, "seed": -1}, "seed"),
    ],
)
def test_bad_arguments_raise_input_error_naming_the_argument(kwargs: dict, name: str) -> None:
    with pytest.raises(InputError, match=rf"^{name}:"):
        make_shape_evidence(**kwargs)


def test_missing_photos_fall_back_to_procedural(monkeypatch: pytest.MonkeyPatch) -> None:
    # If no photo of a split loads (e.g. a wheel without bundled data), backgrounds are procedural.
    monkeypatch.setattr(backgrounds, "available_photos", lambda split: ())
    from meaningful_perturbation.data import shapes

    monkeypatch.setattr(shapes, "available_photos", lambda split: ())
    d = make_shape_evidence(10, size=32, split="train", seed=0)
    assert all(b.startswith("noise:") for b in d.backgrounds) and d.photos == ()


def test_normalize_and_to_tensors(ds: ShapeEvidence) -> None:
    torch = pytest.importorskip("torch")
    z = normalize(ds.images[:2])
    expect = (ds.images[:2] - np.array(MEAN, np.float32)[:, None, None]) / np.array(STD, np.float32)[:, None, None]
    np.testing.assert_allclose(z, expect, rtol=1e-6, atol=1e-6)
    t = ds.to_tensors()
    assert t.images.shape == (len(ds), 3, 64, 64) and t.images.dtype == torch.float32
    torch.testing.assert_close(t.images[:2], torch.from_numpy(z))
    assert t.labels.dtype == torch.int64 and t.masks.dtype == torch.bool
    raw = ds.to_tensors(normalize=False)
    assert torch.equal(raw.images, torch.from_numpy(ds.images))
    with pytest.raises(InputError, match="^images:"):
        normalize(ds.images[0])
