"""Image files, preprocessing and mapping saliency back (meaningful_perturbation.io).

The corpus of unusual and broken files is generated in ``tmp_path`` by the tests themselves;
each case states its expected outcome: loads (size, mode, a sample pixel) or is refused with
a one-line :class:`InputError` naming the file.
"""

from __future__ import annotations

import math
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from meaningful_perturbation.errors import ConfigError, InputError
from meaningful_perturbation.io import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Geometry,
    Preprocessing,
    denormalize,
    expand_images,
    load_image,
    map_to_original,
    preprocess,
    resolve_preprocessing,
)

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


def _close(pixel, expected, tol=12) -> bool:
    return all(abs(int(a) - int(b)) <= tol for a, b in zip(pixel, expected))


def _quadrants(width: int = 80, height: int = 60) -> Image.Image:
    """Top-left red, top-right green, bottom-left blue, bottom-right white."""
    a = np.zeros((height, width, 3), np.uint8)
    h2, w2 = height // 2, width // 2
    a[:h2, :w2], a[:h2, w2:], a[h2:, :w2], a[h2:, w2:] = RED, GREEN, BLUE, WHITE
    return Image.fromarray(a)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG that *claims* width x height RGB pixels but holds a few bytes of data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)
    data += _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + _png_chunk(b"IEND", b"")
    path.write_bytes(data)
    return path


# ----------------------------------------------------------------------------------------------
# Corpus: files that must load
# ----------------------------------------------------------------------------------------------


def _make_rgb_png(d: Path) -> Path:
    p = d / "rgb.png"
    _quadrants().save(p)
    return p


def _make_rgba(d: Path) -> Path:
    a = np.zeros((60, 80, 4), np.uint8)
    a[..., :3] = RED
    a[..., 3] = 255
    a[:10, :10] = (0, 0, 0, 0)  # fully transparent black -> background (white)
    a[:10, -10:] = (0, 0, 0, 128)  # half-transparent black -> mid grey
    p = d / "rgba.png"
    Image.fromarray(a, "RGBA").save(p)
    return p


def _make_palette_transparent(d: Path) -> Path:
    idx = np.ones((60, 80), np.uint8)
    idx[:10, :10] = 0
    im = Image.fromarray(idx, "P")
    im.putpalette([0, 0, 0, *RED] + [0] * (3 * 254))
    p = d / "palette.png"
    im.save(p, transparency=0)
    return p


def _make_gray(d: Path) -> Path:
    p = d / "gray.png"
    Image.new("L", (80, 60), 100).save(p)
    return p


def _make_gray_alpha(d: Path) -> Path:
    p = d / "gray_alpha.png"
    Image.new("LA", (80, 60), (100, 255)).save(p)
    return p


def _make_bilevel(d: Path) -> Path:
    a = np.zeros((60, 80), bool)
    a[:, 40:] = True
    p = d / "bilevel.png"
    Image.fromarray(a).save(p)
    return p


def _make_16bit(d: Path) -> Path:
    a = np.zeros((60, 80), np.uint16)
    a[:, 20:40] = 128 * 257  # 32896 -> 128
    a[:, 40:] = 65535  # -> 255
    p = d / "gray16.png"
    Image.fromarray(a).save(p)
    assert Image.open(p).mode.startswith("I;16")  # the case under test really is 16-bit
    return p


def _make_cmyk_jpeg(d: Path) -> Path:
    p = d / "cmyk.jpg"
    Image.new("CMYK", (80, 60), (0, 255, 255, 0)).save(p, quality=95)  # pure red in CMYK
    assert Image.open(p).mode == "CMYK"
    return p


def _make_exif_rotated(d: Path) -> Path:
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation 6: stored sideways, rotate 90 degrees clockwise to view
    p = d / "rotated.jpg"
    _quadrants(80, 60).save(p, exif=exif.tobytes(), quality=95)
    return p


# (maker, expected (width, height), [((x, y), rgb), ...])
LOADS = [
    pytest.param(_make_rgb_png, (80, 60), [((5, 5), RED), ((75, 55), WHITE)], id="rgb-png"),
    pytest.param(
        _make_rgba, (80, 60), [((2, 2), WHITE), ((77, 2), (127, 127, 127)), ((40, 30), RED)],
        id="rgba-composited-on-white",
    ),
    pytest.param(
        _make_palette_transparent, (80, 60), [((2, 2), WHITE), ((40, 30), RED)], id="palette-transparency"
    ),
    pytest.param(_make_gray, (80, 60), [((5, 5), (100, 100, 100))], id="grayscale"),
    pytest.param(_make_gray_alpha, (80, 60), [((5, 5), (100, 100, 100))], id="grayscale-alpha"),
    pytest.param(_make_bilevel, (80, 60), [((5, 5), (0, 0, 0)), ((70, 5), WHITE)], id="1-bit"),
    pytest.param(
        _make_16bit, (80, 60), [((5, 5), (0, 0, 0)), ((30, 5), (128, 128, 128)), ((70, 5), WHITE)],
        id="16-bit-gray",
    ),
    pytest.param(_make_cmyk_jpeg, (80, 60), [((40, 30), RED)], id="cmyk-jpeg"),
    # Stored 80x60; displayed 60x80. Rotating clockwise brings the stored bottom-left (blue)
    # to the top-left and the stored top-left (red) to the top-right.
    pytest.param(
        _make_exif_rotated, (60, 80), [((5, 5), BLUE), ((55, 5), RED), ((55, 75), GREEN)],
        id="exif-orientation-6",
    ),
]  # fmt: skip


@pytest.mark.parametrize("make, size, pixels", LOADS)
def test_unusual_files_load_as_rgb(tmp_path, make, size, pixels):
    image = load_image(make(tmp_path))
    assert image.mode == "RGB"
    assert image.size == size
    for xy, expected in pixels:
        assert _close(image.getpixel(xy), expected, tol=2 if "jpg" not in make.__name__ else 12), (
            xy, image.getpixel(xy), expected,
        )  # fmt: skip


def test_rgba_background_is_configurable(tmp_path):
    image = load_image(_make_rgba(tmp_path), background=(0, 0, 0))
    assert image.getpixel((2, 2)) == (0, 0, 0)


def test_loaded_image_is_detached_from_the_file(tmp_path):
    path = _make_rgb_png(tmp_path)
    image = load_image(path)
    path.unlink()  # the pixels were fully read; nothing refers to the file any more
    assert image.getpixel((5, 5)) == RED


# ----------------------------------------------------------------------------------------------
# Corpus: files that must be refused
# ----------------------------------------------------------------------------------------------


def _truncated_png(d: Path) -> Path:
    src = d / "full.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(src)
    data = src.read_bytes()
    p = d / "truncated.png"
    p.write_bytes(data[: len(data) // 2])
    return p


def _truncated_jpeg(d: Path) -> Path:
    src = d / "full.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(src)
    data = src.read_bytes()
    p = d / "truncated.jpg"
    p.write_bytes(data[: len(data) // 2])
    return p


def _zero_bytes(d: Path) -> Path:
    p = d / "empty.png"
    p.write_bytes(b"")
    return p


def _text_named_jpg(d: Path) -> Path:
    p = d / "notes.jpg"
    p.write_text("this is not an image\n")
    return p


def _missing(d: Path) -> Path:
    return d / "does_not_exist.png"


def _directory(d: Path) -> Path:
    p = d / "folder.png"
    p.mkdir()
    return p


REFUSALS = [
    pytest.param(_truncated_png, "truncated", id="truncated-png"),
    pytest.param(_truncated_jpeg, "truncated", id="truncated-jpeg"),
    pytest.param(_zero_bytes, "empty", id="zero-bytes"),
    pytest.param(_text_named_jpg, "not an image", id="text-named-jpg"),
    pytest.param(_missing, "no such file", id="missing"),
    pytest.param(_directory, "folder", id="directory"),
]


@pytest.mark.parametrize("make, phrase", REFUSALS)
def test_broken_files_are_refused_with_one_line_naming_the_file(tmp_path, make, phrase):
    path = make(tmp_path)
    with pytest.raises(InputError) as info:
        load_image(path)
    message = str(info.value)
    assert path.name in message
    assert phrase in message
    assert "\n" not in message


def test_decompression_bomb_header_is_refused_fast(tmp_path):
    path = _png_header_only(tmp_path / "bomb.png", 20_000, 20_000)  # 400 Mpx claimed
    start = time.perf_counter()
    with pytest.raises(InputError, match="too large") as info:
        load_image(path)
    assert time.perf_counter() - start < 1.0  # decided from the header, nothing decoded
    assert "bomb.png" in str(info.value)


def test_max_pixels_limit_is_checked_before_decoding(tmp_path):
    # 100 Mpx: above Pillow's warning threshold, below its error threshold; our limit decides.
    path = _png_header_only(tmp_path / "big.png", 10_000, 10_000)
    with pytest.raises(InputError, match="max_pixels=50000000"):
        load_image(path, max_pixels=50_000_000)
    small = _make_rgb_png(tmp_path)
    with pytest.raises(InputError, match="max_pixels=1000"):
        load_image(small, max_pixels=1000)
    assert load_image(small, max_pixels=80 * 60).size == (80, 60)


# ----------------------------------------------------------------------------------------------
# expand_images
# ----------------------------------------------------------------------------------------------


@pytest.fixture()
def image_tree(tmp_path):
    for name in ("b.png", "a.JPG", "c.webp"):
        Image.new("RGB", (4, 4)).save(tmp_path / name, format="PNG")
    (tmp_path / "readme.txt").write_text("x")
    (tmp_path / "sub").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "sub" / "d.png")
    return tmp_path


def test_expand_folder_is_sorted_non_recursive_images_only(image_tree):
    names = [p.name for p in expand_images([str(image_tree)])]
    assert names == ["a.JPG", "b.png", "c.webp"]
    names = [p.relative_to(image_tree).as_posix() for p in expand_images([image_tree], recursive=True)]
    assert names == ["a.JPG", "b.png", "c.webp", "sub/d.png"]


def test_expand_globs_files_and_dedup(image_tree):
    args = [str(image_tree / "*.png"), str(image_tree / "b.png"), str(image_tree / "sub" / "d.png")]
    got = expand_images(args)
    assert [p.name for p in got] == ["b.png", "d.png"]
    explicit = image_tree / "readme.txt"  # an explicitly named file is kept, whatever its extension
    assert expand_images([str(explicit)]) == [explicit]


@pytest.mark.parametrize("arg, phrase", [("*.nothing", "matches no image"), ("missing.png", "no such file")])
def test_expand_refuses_unmatched_arguments_naming_them(tmp_path, arg, phrase):
    text = str(tmp_path / arg)
    with pytest.raises(InputError, match=phrase) as info:
        expand_images([text])
    assert text in str(info.value)


def test_expand_refuses_empty_folder_and_no_arguments(tmp_path):
    with pytest.raises(InputError, match="no images"):
        expand_images([str(tmp_path)])
    with pytest.raises(InputError, match="at least one"):
        expand_images([])


# ----------------------------------------------------------------------------------------------
# Preprocessing recipe and its precedence
# ----------------------------------------------------------------------------------------------


def test_defaults_are_imagenet():
    prep = resolve_preprocessing(None)
    assert (prep.size, prep.resize, prep.crop) == ((224, 224), 256, "center")
    assert prep.mean == IMAGENET_MEAN and prep.std == IMAGENET_STD


def test_precedence_override_then_model_then_default():
    model = Preprocessing(input_size=64, resize=64, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                          class_names=("a", "b"))  # fmt: skip
    prep = resolve_preprocessing(model, std=(0.25, 0.25, 0.25), interpolation=None)
    assert prep.std == (0.25, 0.25, 0.25)  # explicit override
    assert prep.mean == (0.5, 0.5, 0.5) and prep.class_names == ("a", "b")  # model's own
    assert prep.interpolation == "bilinear"  # None = not given -> default


def test_input_size_override_keeps_the_crop_ratio():
    assert resolve_preprocessing(None, input_size=112).resize == 128  # 256/224 kept
    assert resolve_preprocessing(None, input_size=112, resize=200).resize == 200
    assert resolve_preprocessing(None, resize=0).resize is None


@pytest.mark.parametrize(
    "overrides",
    [{"input_size": 0}, {"input_size": (1, 2, 3)}, {"crop": "random"}, {"std": (1, 0, 1)},
     {"mean": (0.5, 0.5)}, {"interpolation": "lanczos"}, {"resize": -3}, {"bogus": 1},
     {"class_names": "cat"}],
)  # fmt: skip
def test_invalid_preprocessing_is_a_config_error(overrides):
    with pytest.raises(ConfigError):
        resolve_preprocessing(None, **overrides)


def test_preprocessing_dict_roundtrip():
    prep = Preprocessing(input_size=(32, 48), resize=None, class_names=("x", "y"))
    assert Preprocessing.from_dict(prep.to_dict()) == prep


# ----------------------------------------------------------------------------------------------
# preprocess / map_to_original / denormalize
# ----------------------------------------------------------------------------------------------


def test_preprocess_normalises_each_channel():
    image = Image.new("RGB", (10, 10), (255, 128, 0))
    x, geometry = preprocess(image, Preprocessing(input_size=10, resize=None))
    expected = [(v / 255 - m) / s for v, m, s in zip((255, 128, 0), IMAGENET_MEAN, IMAGENET_STD)]
    assert x.dtype == torch.float32 and x.shape == (3, 10, 10)
    assert torch.allclose(x[:, 4, 4], torch.tensor(expected), atol=1e-6)
    assert geometry == Geometry((10, 10), (10, 10), (0, 0, 10, 10))


def test_denormalize_inverts_preprocess_without_resize():
    rng = np.random.default_rng(1)
    array = rng.integers(0, 256, (16, 24, 3), np.uint8)
    prep = Preprocessing(input_size=(16, 24), resize=None)
    x, _ = preprocess(Image.fromarray(array), prep)
    back = denormalize(x.unsqueeze(0), prep)[0].permute(1, 2, 0).numpy() * 255
    assert np.abs(back - array).max() < 1e-3


def test_non_square_center_crop_geometry():
    # 300 wide x 200 high, short side -> 100: resized 100 x 150, centred 100 x 100 crop.
    _, geometry = preprocess(Image.new("RGB", (300, 200)), Preprocessing(input_size=100, resize=100))
    assert geometry == Geometry((200, 300), (100, 150), (0, 25, 100, 100))
    _, tall = preprocess(Image.new("RGB", (200, 300)), Preprocessing(input_size=100, resize=100))
    assert tall == Geometry((300, 200), (150, 100), (25, 0, 100, 100))


@pytest.mark.parametrize("crop", ["center", "none"])
def test_saliency_blob_lands_on_the_marked_object(crop):
    """A marker drawn in the original is found in the model input; a saliency blob placed
    there and mapped back peaks on the marker, and the map has the original's size."""
    marker_rc = (60, 190)  # (row, col) in the 300 x 200 original, inside the crop
    array = np.zeros((200, 300, 3), np.uint8)
    array[marker_rc[0] - 3 : marker_rc[0] + 4, marker_rc[1] - 3 : marker_rc[1] + 4] = WHITE
    prep = Preprocessing(input_size=100, resize=100, crop=crop)
    x, geometry = preprocess(Image.fromarray(array), prep)
    brightness = x.sum(0)
    r, c = divmod(int(brightness.argmax()), brightness.shape[1])
    yy, xx = torch.meshgrid(torch.arange(100.0), torch.arange(100.0), indexing="ij")
    blob = torch.exp(-((yy - r) ** 2 + (xx - c) ** 2) / (2 * 2.0**2))
    back = map_to_original(blob, geometry)
    assert back.shape == (200, 300)
    br, bc = divmod(int(back.argmax()), 300)
    assert abs(br - marker_rc[0]) <= 3 and abs(bc - marker_rc[1]) <= 3
    if crop == "center":
        # the crop covered original columns 50..250; outside it the map is 0
        assert back[:, :45].abs().max() == 0 and back[:, 256:].abs().max() == 0


def test_map_to_original_stack_and_fill():
    geometry = Geometry((200, 300), (100, 150), (0, 25, 100, 100))
    maps = torch.ones(2, 100, 100)
    out = map_to_original(maps, geometry, fill=float("nan"))
    assert out.shape == (2, 200, 300)
    assert torch.isnan(out[:, :, :40]).all() and torch.isnan(out[:, :, 260:]).all()
    assert torch.allclose(out[:, :, 60:240], torch.ones(2, 200, 180))
    zero_fill = map_to_original(maps, geometry)
    assert not torch.isnan(zero_fill).any() and zero_fill[:, :, :40].abs().max() == 0


def test_map_to_original_refuses_a_mismatched_map():
    geometry = Geometry((200, 300), (100, 150), (0, 25, 100, 100))
    with pytest.raises(InputError, match=r"\(64, 64\)"):
        map_to_original(torch.zeros(64, 64), geometry)
    with pytest.raises(InputError, match="dimensions"):
        map_to_original(torch.zeros(1, 1, 100, 100), geometry)


def test_preprocess_accepts_any_mode():
    rgba = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    x, _ = preprocess(rgba, Preprocessing(input_size=8, resize=None))
    white = torch.tensor([(1 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)])
    assert torch.allclose(x[:, 0, 0], white, atol=1e-6)
    assert math.isclose(float(denormalize(x, Preprocessing())[0].min()), 1.0, abs_tol=1e-6)
