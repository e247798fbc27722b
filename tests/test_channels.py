"""Input channels: grey (1) and RGB (3) models from the library and the CLI (issue 12 §2).

The channel count comes from the model's metadata (transformers ``num_channels``, timm
``input_size``, a factory's ``channels`` / ``(C, H, W)``), else its first Conv2d, else 3, and
``--channels`` overrides it; one forward pass checks it before any output is written.
"""

import json
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image

from meaningful_perturbation.cli import main
from meaningful_perturbation.errors import ConfigError
from meaningful_perturbation.io import (
    GREY_MEAN,
    GREY_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    Preprocessing,
    denormalize,
    load_image,
    preprocess,
    resolve_preprocessing,
    stats_for_channels,
    to_grey,
)
from meaningful_perturbation.models import infer_channels, load_model, resolve_model_preprocessing
from meaningful_perturbation.models.base import LoadedModel

GREY_FACTORY = """
import torch
def build():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 2))
    return net, {"input_size": 32, "resize": 32}
def declared():
    net, info = build()
    return net, {**info, "channels": 1}
def declared_wrong():
    net, info = build()
    return net, {**info, "channels": 3}
def mlp():
    # No convolution: only the forward pass can tell that it wants one channel.
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16 * 16, 2)), {"input_size": 16, "resize": 16}
def rgba():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(4, 2, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    return net, {"input_size": 16}
"""


@pytest.fixture(autouse=True)
def _threads():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture()
def grey_file(tmp_path):
    path = tmp_path / "grey.py"
    path.write_text(GREY_FACTORY)
    return path


@pytest.fixture()
def xray(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    values = (np.random.RandomState(0).rand(40, 40) * 255).astype("uint8")
    Image.fromarray(values, "L").save(folder / "xray.png")
    return folder / "xray.png"


@pytest.fixture(scope="module")
def hf_grey(tmp_path_factory):
    pytest.importorskip("transformers", reason="transformers cannot be imported here")
    import transformers
    from transformers import ViTConfig, ViTForImageClassification

    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    cfg = ViTConfig(image_size=32, patch_size=8, num_channels=1, hidden_size=32, num_hidden_layers=1,
                    num_attention_heads=2, intermediate_size=64, num_labels=2)
    folder = tmp_path_factory.mktemp("hf") / "vit1"
    ViTForImageClassification(cfg).save_pretrained(folder)
    return folder


# ----------------------------------------------------------------------------------------------
# Decoding and normalising
# ----------------------------------------------------------------------------------------------


def test_grey_png_becomes_normalised_luma(tmp_path):
    rgb = (np.random.RandomState(1).rand(12, 20, 3) * 255).astype("uint8")
    Image.fromarray(rgb, "RGB").save(tmp_path / "c.png")
    Image.fromarray(rgb[..., 0], "L").save(tmp_path / "g.png")
    prep = Preprocessing(input_size=(12, 20), resize=None, channels=1, mean=0.5, std=0.25)
    # A grey file: its values, normalised.
    x, _ = preprocess(load_image(tmp_path / "g.png"), prep)
    assert x.shape == (1, 12, 20)
    expected = (rgb[..., 0].astype(np.float32) / 255 - 0.5) / 0.25
    np.testing.assert_allclose(x[0].numpy(), expected, atol=1e-6)
    # A colour file: ITU-R 601-2 luma, rounded to 8 bits as Pillow does.
    luma = np.rint(rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114]))
    x, _ = preprocess(load_image(tmp_path / "c.png"), prep)
    assert np.abs(x[0].numpy() - (luma / 255 - 0.5) / 0.25).max() <= 1 / 255 / 0.25 + 1e-6
    grey = load_image(tmp_path / "c.png", channels=1)
    assert grey.mode == "L"
    np.testing.assert_array_equal(np.asarray(grey), np.asarray(Image.fromarray(rgb).convert("L")))
    # Pure red is 76 (0.299 * 255 = 76.2).
    assert to_grey(Image.new("RGB", (1, 1), (255, 0, 0))).getpixel((0, 0)) == 76


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P", "CMYK", "I;16", "1"])
def test_every_mode_decodes_to_grey_like_its_rgb_luma(tmp_path, mode):
    rng = np.random.RandomState(2)
    if mode == "I;16":
        image = Image.fromarray((rng.rand(9, 7) * 65535).astype("uint16"))
    else:
        image = Image.fromarray((rng.rand(9, 7, 3) * 255).astype("uint8"), "RGB").convert(mode)
        if mode in ("RGBA", "LA"):
            image.putalpha(Image.fromarray((rng.rand(9, 7) * 255).astype("uint8"), "L"))
    path = tmp_path / ("x.tif" if mode in ("CMYK", "I;16") else "x.png")
    image.save(path)
    grey = load_image(path, channels=1)
    assert grey.mode == "L" and grey.size == (7, 9)
    np.testing.assert_array_equal(np.asarray(grey), np.asarray(load_image(path).convert("L")))
    x, _ = preprocess(load_image(path), Preprocessing(input_size=(9, 7), resize=None, channels=1))
    np.testing.assert_allclose(
        x[0].numpy(), (np.asarray(grey, np.float32) / 255 - GREY_MEAN[0]) / GREY_STD[0], atol=1e-5
    )


def test_denormalize_keeps_one_channel():
    prep = Preprocessing(input_size=4, resize=None, channels=1, mean=0.5, std=0.25)
    x, _ = preprocess(Image.new("L", (4, 4), 51), prep)
    shown = denormalize(x, prep)
    assert shown.shape == (1, 4, 4) and torch.allclose(shown, torch.full((1, 4, 4), 0.2))


# ----------------------------------------------------------------------------------------------
# Statistics
# ----------------------------------------------------------------------------------------------


def test_grey_defaults_are_the_luma_of_imagenet_statistics():
    prep = Preprocessing(channels=1)
    assert prep.mean == GREY_MEAN and prep.std == GREY_STD
    assert GREY_MEAN[0] == pytest.approx(0.299 * 0.485 + 0.587 * 0.456 + 0.114 * 0.406)
    assert GREY_STD[0] == pytest.approx(0.299 * 0.229 + 0.587 * 0.224 + 0.114 * 0.225)
    assert Preprocessing().mean == IMAGENET_MEAN and Preprocessing().std == IMAGENET_STD
    # An RGB model switched to one channel carries its statistics over the same way.
    rgb = Preprocessing(mean=(0.2, 0.4, 0.6), std=(0.5, 0.5, 0.5))
    grey = resolve_preprocessing(rgb, channels=1)
    assert grey.mean == pytest.approx((0.299 * 0.2 + 0.587 * 0.4 + 0.114 * 0.6,)) and grey.std == (0.5,)
    assert resolve_preprocessing(grey, channels=3).mean == grey.mean * 3
    assert stats_for_channels((0.1,), 3) == (0.1, 0.1, 0.1)
    assert Preprocessing.from_dict(grey.to_dict()) == grey


def test_one_value_or_one_per_channel():
    assert Preprocessing(mean=0.5, std=[0.25]).mean == (0.5, 0.5, 0.5)
    assert Preprocessing(mean=0.5, std=[0.25]).std == (0.25, 0.25, 0.25)
    assert resolve_preprocessing(Preprocessing(channels=1), mean=[0.3], std=[0.1]).std == (0.1,)
    with pytest.raises(ConfigError) as info:
        resolve_preprocessing(Preprocessing(channels=1), mean=[0.1, 0.2], names={"mean": "--mean"})
    assert str(info.value) == "--mean: expected 1 value (the model input has 1 channel), got 2 (0.1 0.2)"
    with pytest.raises(ConfigError) as info:
        resolve_preprocessing(None, std=[0.1, 0.2])
    assert str(info.value) == (
        "resolve_preprocessing: std: expected 1 value (used for every channel) or 3 (one per channel), "
        "got 2 (0.1 0.2)"
    )
    with pytest.raises(ConfigError, match=r"Preprocessing.channels: expected 1 \(grey\) or 3 \(RGB\), got 4"):
        Preprocessing(channels=4)
    with pytest.raises(ConfigError, match="positive"):
        Preprocessing(channels=1, std=0.0)


# ----------------------------------------------------------------------------------------------
# Where the count comes from
# ----------------------------------------------------------------------------------------------


def test_infer_channels_rule():
    assert infer_channels(torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Conv2d(4, 3, 1))) == (
        1, "first Conv2d layer (in_channels=1)"
    )
    # The first registered Conv2d decides; a count mperturb cannot feed says nothing.
    assert infer_channels(torch.nn.Sequential(torch.nn.Conv2d(64, 4, 3), torch.nn.Conv2d(1, 64, 3))) is None
    assert infer_channels(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 2))) is None
    assert infer_channels(torch.nn.Sequential(torch.nn.LazyConv2d(4, 3), torch.nn.Conv2d(4, 2, 1))) is None
    assert infer_channels(lambda x: x) is None
    scripted = torch.jit.script(torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3)))
    assert infer_channels(scripted)[0] == 1


def test_factory_metadata_and_layers(grey_file):
    loaded = load_model(f"python:{grey_file}:build", trust_code=True)  # no metadata: the first Conv2d says 1
    assert loaded.preprocessing.channels == 1 and loaded.preprocessing.mean == GREY_MEAN
    assert not loaded.channels_declared and "Conv2d" in loaded.channels_from
    loaded = load_model(f"python:{grey_file}:declared", trust_code=True)
    assert loaded.preprocessing.channels == 1 and loaded.channels_declared
    (grey_file.parent / "chw.py").write_text(textwrap.dedent("""
        import torch
        def build():
            return torch.nn.Flatten(), {"input_size": (1, 8, 12), "mean": [0.5], "std": [0.5]}
        def clash():
            return torch.nn.Flatten(), {"input_size": (1, 8, 8), "channels": 3}
    """))
    loaded = load_model(f"python:{grey_file.parent / 'chw.py'}:build", trust_code=True)
    prep = loaded.preprocessing
    assert (prep.channels, prep.size, prep.mean) == (1, (8, 12), (0.5,)) and loaded.channels_declared
    clash = r"input_size \(1, 8, 8\) \(C, H, W\) says 1 channel\(s\) but channels says 3"
    with pytest.raises(ConfigError, match=clash):
        load_model(f"python:{grey_file.parent / 'chw.py'}:clash", trust_code=True)


def test_probe_corrects_an_inferred_count_and_refuses_a_stated_one(grey_file):
    loaded = load_model(f"python:{grey_file}:mlp", trust_code=True)  # no conv: default 3, the pass says 1
    assert loaded.preprocessing.channels == 3 and loaded.channels_from is None
    prep = resolve_model_preprocessing(loaded, {})
    assert prep.channels == 1 and prep.mean == GREY_MEAN
    with pytest.raises(ConfigError) as info:
        resolve_model_preprocessing(load_model(f"python:{grey_file}:declared_wrong", trust_code=True), {})
    assert str(info.value) == (
        "the model takes 1 input channel but would receive 3 (declared_wrong() metadata (channels=3)); "
        "pass channels 1"
    )
    with pytest.raises(ConfigError) as info:
        resolve_model_preprocessing(load_model(f"python:{grey_file}:rgba", trust_code=True), {})
    assert str(info.value).startswith(
        "the model takes 4 input channels but mperturb feeds images as 1 (grey) or 3 (RGB) channels (received 3"
    )


def test_hf_num_channels(hf_grey, tmp_path):
    loaded = load_model(f"hf:{hf_grey}")
    assert loaded.preprocessing.channels == 1 and loaded.channels_declared
    assert loaded.channels_from == "config.json num_channels=1"
    x, _ = preprocess(Image.new("L", (40, 40), 128), loaded.preprocessing)
    assert loaded.model(x[None]).shape == (1, 2)
    # A processor config written for RGB (transformers' default 0.5 x 3) is carried over.
    (hf_grey / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "ViTImageProcessor", "do_normalize": True, "do_resize": True,
        "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "size": {"height": 32, "width": 32},
    }))
    try:
        prep = load_model(f"hf:{hf_grey}").preprocessing
    finally:
        (hf_grey / "preprocessor_config.json").unlink()
    assert (prep.channels, prep.mean, prep.std) == (1, (0.5,), (0.5,))


def test_timm_input_size_gives_channels():
    import types

    from meaningful_perturbation.models.hub import _timm_preprocessing

    data = types.SimpleNamespace(
        resolve_model_data_config=lambda model: {
            "input_size": (1, 24, 24), "crop_pct": 1.0, "mean": IMAGENET_MEAN, "std": IMAGENET_STD,
        },
        infer_imagenet_subset=lambda model: None,
    )
    prep = _timm_preprocessing(types.SimpleNamespace(data=data), torch.nn.Identity())
    assert (prep.channels, prep.size, prep.mean, prep.std) == (1, (24, 24), GREY_MEAN, GREY_STD)
    data.resolve_model_data_config = lambda model: {"input_size": (4, 24, 24)}
    with pytest.raises(ConfigError, match=r"takes 4 input channels \(timm data config input_size\)"):
        _timm_preprocessing(types.SimpleNamespace(data=data), torch.nn.Identity(), "timm:x")


# ----------------------------------------------------------------------------------------------
# The command line
# ----------------------------------------------------------------------------------------------


def test_cli_explain_grey_models(grey_file, xray, hf_grey, tmp_path, capsys):
    for spec, extra in ((f"python:{grey_file}:build", ["--mean", "0.5", "--std", "0.25", "--trust-code"]),
                        (f"hf:{hf_grey}", ["--method", "seed"])):
        out = tmp_path / spec.split(":")[0]
        rc = main(["explain", str(xray), "--model", spec, "--steps", "2", "--out", str(out), "-q", *extra])
        assert rc == 0, capsys.readouterr().err
        summary = json.loads((out / "xray_summary.json").read_text())
        assert summary["preprocessing"]["channels"] == 1
        overlay = Image.open(out / "xray_overlay.png")
        assert overlay.mode == "RGB" and overlay.size == (40, 40)
        assert min(Image.open(out / "xray_panel.png").size) > 40
    config = json.loads((tmp_path / "python" / "config.json").read_text())
    assert config["preprocessing"]["mean"] == [0.5] and config["preprocessing"]["std"] == [0.25]
    seed = json.loads((tmp_path / "hf" / "xray_summary.json").read_text())
    # seed's median perturbation rebuilds the 8-bit image with the input's own statistics.
    assert seed["config"]["mean"] == list(GREY_MEAN) and seed["config"]["std"] == list(GREY_STD)


def test_cli_run_grey_model_with_report(grey_file, xray, tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["run", str(xray.parent), "--model", f"python:{grey_file}:build", "--trust-code", "--steps", "2",
               "--out", str(out), "-q", "--report"])
    assert rc == 0, capsys.readouterr().err
    lines = (out / "results.jsonl").read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["path"] == "xray.png"
    settings = json.loads((out / "settings.json").read_text())
    assert settings["compared"]["preprocessing"]["channels"] == 1
    assert (out / "report.html").is_file() and Image.open(next((out / "items").glob("*_thumb.png"))).size == (40, 40)


def _error(capsys) -> str:
    """The one ``mperturb: error:`` line on stderr (transformers may draw a progress bar, and a
    model without preprocessing metadata gets an "assumed" warning, before it)."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("mperturb") and "warning:" not in line]
    assert "Traceback" not in err and len(lines) == 1 and err.endswith(lines[0] + "\n"), err
    return lines[0] + "\n"


def test_cli_mean_count_mismatch(grey_file, xray, tmp_path, capsys):
    out = tmp_path / "o"
    rc = main(["explain", str(xray), "--model", f"python:{grey_file}:build", "--trust-code", "--mean", "0.1", "0.2",
               "--out", str(out), "-q"])
    assert rc == 2
    assert _error(capsys) == (
        "mperturb: error: --mean: expected 1 value (the model input has 1 channel), got 2 (0.1 0.2)\n"
    )
    assert not out.exists()


@pytest.mark.parametrize("command", ["explain", "run"])
def test_cli_forced_channels_that_do_not_fit(command, grey_file, xray, hf_grey, tmp_path, capsys):
    source = str(xray) if command == "explain" else str(xray.parent)
    out = tmp_path / "o"
    rc = main([command, source, "--model", f"hf:{hf_grey}", "--channels", "3", "--out", str(out), "-q"])
    assert rc == 2
    assert _error(capsys) == (
        "mperturb: error: the model takes 1 input channel (config.json num_channels=1) but would receive 3 "
        "(--channels 3); pass --channels 1 or drop --channels\n"
    )
    assert not out.exists()
    rc = main([command, source, "--model", f"python:{grey_file}:build", "--trust-code", "--channels", "3", "--out", str(out), "-q"])
    assert rc == 2
    assert _error(capsys) == (
        "mperturb: error: the model takes 1 input channel but would receive 3 (--channels 3); "
        "pass --channels 1 or drop --channels\n"
    )
    assert not out.exists()


def test_cli_channels_option_values(grey_file, xray, tmp_path, capsys):
    rc = main(["explain", str(xray), "--model", f"python:{grey_file}:build", "--trust-code", "--channels", "4",
               "--out", str(tmp_path / "o")])
    assert rc == 2 and "--channels: expected 1 (grey) or 3 (RGB), got '4'" in capsys.readouterr().err
    # Forcing one channel on a model that takes RGB names both counts too.
    (tmp_path / "rgb.py").write_text(GREY_FACTORY.replace("Conv2d(1, 4", "Conv2d(3, 4"))
    rc = main(["explain", str(xray), "--model", f"python:{tmp_path / 'rgb.py'}:build", "--trust-code", "--channels", "1",
               "--out", str(tmp_path / "o"), "-q"])
    assert rc == 2
    assert _error(capsys) == (
        "mperturb: error: the model takes 3 input channels but would receive 1 (--channels 1); "
        "pass --channels 3 or drop --channels\n"
    )


def test_grey_tiles_are_shown_as_grey_rgb():
    from meaningful_perturbation.cli.explain import _to_hwc_uint8

    tile = _to_hwc_uint8(torch.tensor([[[0.0, 0.5], [1.0, 0.2]]]))
    assert tile.shape == (2, 2, 3) and tile.dtype == np.uint8
    assert (tile[..., 0] == tile[..., 1]).all() and (tile[..., 1] == tile[..., 2]).all()
    assert tile[..., 0].tolist() == [[0, 128], [255, 51]]


def test_loaded_model_defaults_keep_old_construction():
    loaded = LoadedModel(torch.nn.Identity(), Preprocessing(), "x")
    assert loaded.channels_from is None and loaded.channels_declared is False
