"""Conventions of the model zoos (torchvision, timm) that plain tests can check without them:
the resize before the centre crop truncates the long side like torchvision's ``Resize(int)``
(``weights.transforms()``, timm's ``create_transform``), so the crop sees the library's pixels;
a WordNet synonym ("tabby" of timm's "tabby, tabby cat") names its class."""

import pytest

from meaningful_perturbation.io.preprocessing import Preprocessing, _plan


@pytest.mark.parametrize(
    "original, resize, resized, crop_top_left",
    [
        ((300, 451), 232, (232, 348), (4, 62)),  # chelsea, torchvision resnet50 (348.77 -> 348)
        ((300, 451), 256, (256, 384), (16, 80)),  # vgg19: 384.85 -> 384 (rounding gave 385)
        ((451, 300), 235, (353, 235), (64, 6)),  # portrait, timm crop_pct 0.95: 353.31 -> 353
        ((512, 512), 248, (248, 248), (12, 12)),  # square
    ],
)
def test_long_side_truncated_like_torchvision(original, resize, resized, crop_top_left):
    g = _plan(original, Preprocessing(input_size=224, resize=resize))
    assert g.resized_size == resized
    assert g.crop_box == (*crop_top_left, 224, 224)


def test_resize_below_the_crop_still_covers_it():
    # resize 100 < crop 224: the image is scaled to cover the crop window (unchanged rule)
    g = _plan((300, 451), Preprocessing(input_size=224, resize=100))
    assert g.resized_size == (224, 337)
    assert g.crop_box == (0, 56, 224, 224)


# --- class names with WordNet synonyms (timm: "tabby, tabby cat") ------------------------------
import torch  # noqa: E402

from meaningful_perturbation.errors import ConfigError  # noqa: E402
from meaningful_perturbation.targets import target_from_option  # noqa: E402

_SYNONYM_NAMES = ["tench, Tinca tinca", "tabby, tabby cat", "tiger cat", "crane", "crane, bird"]


@pytest.mark.parametrize("option, index", [("tabby", 1), ("Tabby Cat", 1), ("tabby, tabby cat", 1),
                                           ("tiger cat", 2), ("tinca tinca", 0)])
def test_a_synonym_names_its_class(option, index):
    assert target_from_option(option, torch.zeros(1, 5), _SYNONYM_NAMES) == [[index]]


def test_a_synonym_listed_by_two_classes_is_refused():
    names = _SYNONYM_NAMES + ["bird, fowl"]
    with pytest.raises(ConfigError) as e:
        target_from_option("bird", torch.zeros(1, 6), names)
    assert str(e.value) == (
        "--target: class name 'bird' is ambiguous, listed by classes 4 ('crane, bird'), "
        "5 ('bird, fowl'); give the index"
    )


def test_a_full_name_still_wins_over_synonyms():
    assert target_from_option("crane", torch.zeros(1, 5), _SYNONYM_NAMES) == [[3]]
