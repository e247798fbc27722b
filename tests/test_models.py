"""Model specs (meaningful_perturbation.models): every source that can run here.

The main environment has no torchvision or timm: stand-in modules that mimic the parts of
their API we call exercise our own code paths here, and the real libraries are tested in
``tests/integration/test_hub_weights.py`` (the integration environment of ``.ci/run``).
"""

from __future__ import annotations

import json
import os
import sys
import textwrap
import types
from pathlib import Path

import pytest
import torch
from torch import nn

from meaningful_perturbation.errors import ConfigError, InputError, MeaningfulPerturbationWarning, ModelError
from meaningful_perturbation.io import IMAGENET_MEAN, Preprocessing
from meaningful_perturbation.models import (
    PREPROCESSING_EXTRA_FILE,
    LoadedModel,
    apply_state_dict,
    list_model_specs,
    load_model,
    load_state_dict_file,
)


def tiny_net(num_classes: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(4, num_classes),
    )  # fmt: skip


X = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))

FACTORY_SOURCE = textwrap.dedent(
    """
    import torch
    from torch import nn

    def _net():
        return nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(4, 3),
        )

    def build():
        return _net(), {"input_size": 32, "resize": None, "class_names": ["a", "b", "c"]}

    def build_plain():
        return _net()

    def broken():
        raise RuntimeError("boom")

    def not_a_model():
        return 42
    """
)


@pytest.fixture()
def factory_file(tmp_path) -> Path:
    path = tmp_path / "my_model.py"
    path.write_text(FACTORY_SOURCE)
    return path


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _random_weights_like(model: nn.Module) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    return {k: torch.randn(v.shape, generator=g) for k, v in model.state_dict().items()}


# ----------------------------------------------------------------------------------------------
# Spec table and spec errors
# ----------------------------------------------------------------------------------------------


def test_list_model_specs_covers_every_prefix():
    rows = list_model_specs()
    prefixes = [row.pattern.split(":")[0].split("[")[0] for row in rows]  # demo[:FAMILY] -> demo
    assert prefixes == ["demo", "torchvision", "timm", "hf", "torchscript", "export", "python"]
    assert all(row.description and row.example for row in rows)


def test_unknown_prefix_lists_valid_prefixes():
    with pytest.raises(ConfigError) as info:
        load_model("keras:model.h5")
    message = str(info.value)
    for prefix in ("demo", "torchvision:", "timm:", "hf:", "torchscript:", "export:", "python:"):
        assert prefix in message


def test_bare_file_path_gets_a_hint(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(b"x")
    with pytest.raises(ConfigError, match="torchscript:"):
        load_model(str(path))


@pytest.mark.parametrize("spec", ["torchscript:", "python:model.py", "demo:extra", "", "hf:"])
def test_malformed_specs_are_config_errors(spec):
    with pytest.raises(ConfigError):
        load_model(spec)


@pytest.mark.parametrize("prefix", ["torchscript", "export", "python"])
def test_missing_file_is_named(tmp_path, prefix):
    missing = tmp_path / "nope.bin"
    spec = f"{prefix}:{missing}" + (":build" if prefix == "python" else "")
    with pytest.raises(InputError, match="no such file") as info:
        load_model(spec)
    assert str(missing) in str(info.value)


def test_missing_weights_file_fails_before_building(factory_file, tmp_path):
    with pytest.raises(InputError, match="no such file"):
        load_model(f"python:{factory_file}:broken", weights=tmp_path / "absent.safetensors", trust_code=True)


# ----------------------------------------------------------------------------------------------
# demo
# ----------------------------------------------------------------------------------------------


def test_demo_model_and_preprocessing():
    demo = pytest.importorskip("meaningful_perturbation.demo", reason="demo package not written yet")
    try:
        loaded = load_model("demo")
    except InputError as exc:  # weights not trained/shipped yet
        pytest.skip(f"demo weights unavailable: {exc}")
    expected = demo.DEMO_PREPROCESSING
    assert isinstance(loaded, LoadedModel) and loaded.spec == "demo"
    assert loaded.preprocessing.size == (expected["input_size"],) * 2
    assert loaded.preprocessing.resize == expected["input_size"]  # never crops the demo image
    assert loaded.class_names == tuple(expected["class_names"])
    size = expected["input_size"]
    assert loaded.model(torch.zeros(2, 3, size, size)).shape == (2, len(expected["class_names"]))
    assert not loaded.model.training


def test_demo_with_a_weights_file(tmp_path):
    demo = pytest.importorskip("meaningful_perturbation.demo", reason="demo package not written yet")
    from safetensors.torch import save_file

    donor = demo.ShapeNet(num_classes=len(demo.DEMO_PREPROCESSING["class_names"]))
    path = tmp_path / "demo.safetensors"
    save_file({k: v.contiguous() for k, v in donor.state_dict().items()}, str(path))
    loaded = load_model("demo", weights=path)
    assert _same_weights(loaded.model, donor)
    assert loaded.class_names == tuple(demo.DEMO_PREPROCESSING["class_names"])


# ----------------------------------------------------------------------------------------------
# python:FILE.py:FACTORY and weights files
# ----------------------------------------------------------------------------------------------


def test_python_factory_with_preprocessing_dict(factory_file):
    loaded = load_model(f"python:{factory_file}:build", trust_code=True)
    assert loaded.preprocessing == Preprocessing(input_size=32, resize=None, class_names=("a", "b", "c"))
    assert loaded.class_names == ("a", "b", "c")
    assert loaded.model(X).shape == (2, 3)
    assert not loaded.model.training


def test_python_factory_plain_module_gets_imagenet_defaults(factory_file):
    with pytest.warns(MeaningfulPerturbationWarning) as caught:
        loaded = load_model(f"python:{factory_file}:build_plain", trust_code=True)
    assert loaded.preprocessing == Preprocessing(assumed=True)  # ImageNet, marked as a guess
    assert [str(w.message) for w in caught] == [
        f"model spec 'python:{factory_file}:build_plain': the model does not state its preprocessing "
        "(the factory returned no preprocessing); assumed short side resized to 256, centre crop 224x224, "
        "mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225), bilinear; if it was trained otherwise, "
        "set --input-size, --resize, --mean and --std (Python API: resolve_preprocessing)"
    ]
    assert loaded.class_names is None


def test_python_factory_errors(factory_file):
    with pytest.raises(ConfigError, match="build_plain"):  # lists what the file defines
        load_model(f"python:{factory_file}:nonexistent", trust_code=True)
    with pytest.raises(ModelError, match="boom"):
        load_model(f"python:{factory_file}:broken", trust_code=True)
    with pytest.raises(ConfigError, match="int"):
        load_model(f"python:{factory_file}:not_a_model", trust_code=True)
    bad = factory_file.with_name("syntax_error.py")
    bad.write_text("def build(:\n")
    with pytest.raises(ModelError, match="syntax_error.py"):
        load_model(f"python:{bad}:build", trust_code=True)


def test_python_factory_with_safetensors_weights(factory_file, tmp_path):
    from safetensors.torch import save_file

    reference = load_model(f"python:{factory_file}:build", trust_code=True).model
    weights = _random_weights_like(reference)
    path = tmp_path / "w.safetensors"
    save_file(weights, str(path))
    loaded = load_model(f"python:{factory_file}:build", weights=path, trust_code=True)
    assert all(torch.equal(loaded.model.state_dict()[k], v) for k, v in weights.items())
    assert not _same_weights(loaded.model, reference)


def test_weights_via_torch_load_weights_only(factory_file, tmp_path):
    reference = load_model(f"python:{factory_file}:build", trust_code=True).model
    weights = _random_weights_like(reference)
    plain, nested = tmp_path / "w.pt", tmp_path / "ckpt.pth"
    torch.save(weights, plain)
    torch.save({"epoch": 3, "state_dict": {"module." + k: v for k, v in weights.items()}}, nested)
    for path in (plain, nested):
        loaded = load_model(f"python:{factory_file}:build", weights=str(path), trust_code=True)
        assert all(torch.equal(loaded.model.state_dict()[k], v) for k, v in weights.items())


def test_pickled_module_needs_trust_code(factory_file, tmp_path):
    donor = tiny_net()
    with torch.no_grad():
        for p in donor.parameters():
            p.add_(1.0)
    path = tmp_path / "full_model.pt"
    torch.save(donor, path)
    with pytest.raises(ConfigError) as info:
        load_state_dict_file(path)
    message = str(info.value)
    assert "--trust-code" in message and "trust_code=True" in message and "full_model.pt" in message
    state = load_state_dict_file(path, trust_code=True)
    assert all(torch.equal(state[k], v) for k, v in donor.state_dict().items())
    # unsafe_pickle= is kept as a deprecated alias of trust_code=
    loaded = load_model(f"python:{factory_file}:build", weights=path, unsafe_pickle=True)
    assert _same_weights(loaded.model, donor)


def test_weights_that_do_not_fit_are_listed(factory_file, tmp_path):
    reference = load_model(f"python:{factory_file}:build", trust_code=True).model
    weights = dict(reference.state_dict())
    weights["extra.weight"] = weights.pop("4.weight")
    weights["0.bias"] = torch.zeros(7)
    path = tmp_path / "bad.pt"
    torch.save(weights, path)
    with pytest.raises(InputError) as info:
        load_model(f"python:{factory_file}:build", weights=path, trust_code=True)
    message = str(info.value)
    assert "bad.pt" in message
    assert "missing key(s): 4.weight" in message
    assert "unexpected key(s): extra.weight" in message
    assert "0.bias (file (7,) vs model (4,))" in message


@pytest.mark.parametrize(
    "content, phrase", [(b"", "empty"), (b"not a checkpoint", "not a PyTorch weights file")]
)
def test_unreadable_weights_files(tmp_path, content, phrase):
    path = tmp_path / "w.pt"
    path.write_bytes(content)
    with pytest.raises(InputError, match=phrase):
        load_state_dict_file(path)
    bad_safe = tmp_path / "w.safetensors"
    bad_safe.write_bytes(b"garbage" * 10)
    with pytest.raises(InputError, match="safetensors"):
        load_state_dict_file(bad_safe)


def test_apply_state_dict_is_strict_and_copies():
    model = nn.Linear(3, 2)
    apply_state_dict(model, {"weight": torch.ones(2, 3), "bias": torch.zeros(2)}, source="test")
    assert torch.equal(model.weight, torch.ones(2, 3))
    with pytest.raises(InputError, match="1 missing key"):
        apply_state_dict(model, {"weight": torch.ones(2, 3)}, source="test")


# ----------------------------------------------------------------------------------------------
# torchscript: and export:
# ----------------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
def test_torchscript_roundtrip_with_preprocessing(tmp_path):
    net = tiny_net().eval()
    path = tmp_path / "model.pt"
    prep = Preprocessing(input_size=16, resize=None, class_names=("a", "b", "c"))
    extra = {PREPROCESSING_EXTRA_FILE: json.dumps(prep.to_dict())}
    torch.jit.save(torch.jit.script(net), str(path), _extra_files=extra)
    loaded = load_model(f"torchscript:{path}", trust_code=True)
    assert loaded.preprocessing == prep
    assert torch.allclose(loaded.model(X), net(X), atol=1e-6)
    plain = tmp_path / "plain.pt"
    torch.jit.save(torch.jit.script(net), str(plain))
    with pytest.warns(MeaningfulPerturbationWarning, match=r"\(no preprocessing.json in the archive\); assumed short side"):
        assert load_model(f"torchscript:{plain}", trust_code=True).preprocessing == Preprocessing(assumed=True)


def test_torchscript_refuses_a_state_dict(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save(tiny_net().state_dict(), path)
    with pytest.raises(InputError, match="not a TorchScript archive"):
        load_model(f"torchscript:{path}", trust_code=True)


def test_export_roundtrip_and_mode_switching(tmp_path):
    net = tiny_net().eval()
    program = torch.export.export(net, (X,), dynamic_shapes=({0: torch.export.Dim.AUTO},))
    path = tmp_path / "model.pt2"
    extra = {PREPROCESSING_EXTRA_FILE: json.dumps({"input_size": 16})}
    torch.export.save(program, str(path), extra_files=extra)
    loaded = load_model(f"export:{path}", trust_code=True)
    assert loaded.preprocessing.size == (16, 16)
    assert torch.allclose(loaded.model(X), net(X), atol=1e-6)
    assert torch.allclose(loaded.model(X[:1]), net(X[:1]), atol=1e-6)  # batch size is free
    loaded.model.train()  # exported graphs refuse train()/eval(); the wrapper must not
    loaded.model.eval()
    x = X.clone().requires_grad_(True)
    loaded.model(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


# ----------------------------------------------------------------------------------------------
# hf:ID_OR_DIR
# ----------------------------------------------------------------------------------------------


@pytest.fixture()
def offline_env(monkeypatch):
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def _tiny_vit_folder(path: Path, with_processor: bool = True) -> Path:
    transformers = pytest.importorskip("transformers")
    config = transformers.ViTConfig(
        image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, num_labels=3, id2label={0: "cat", 1: "dog", 2: "bird"},
        label2id={"cat": 0, "dog": 1, "bird": 2},
    )  # fmt: skip
    transformers.ViTForImageClassification(config).save_pretrained(path)
    if with_processor:
        (path / "preprocessor_config.json").write_text(json.dumps({
            "image_processor_type": "ViTImageProcessor", "do_resize": True, "do_normalize": True,
            "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "resample": 2,
            "size": {"height": 32, "width": 32},
        }))  # fmt: skip
    return path


def _no_network(monkeypatch):
    """Make any HTTP request by huggingface_hub fail loudly (a local load must not make one)."""
    import huggingface_hub.file_download as fd

    def refuse(*args, **kwargs):
        raise AssertionError(f"network used: {args[:2]}")

    for name in ("get_hf_file_metadata", "http_get", "_request_wrapper"):
        if hasattr(fd, name):
            monkeypatch.setattr(fd, name, refuse)


def test_hf_local_folder(tmp_path, offline_env):
    folder = _tiny_vit_folder(tmp_path / "vit")
    _no_network(offline_env)
    loaded = load_model(f"hf:{folder}")  # downloads on by default, yet a folder is read locally
    assert loaded.class_names == ("cat", "dog", "bird")
    prep = loaded.preprocessing
    assert (prep.size, prep.crop, prep.mean, prep.assumed) == ((32, 32), "none", (0.5, 0.5, 0.5), False)
    logits = loaded.model(torch.randn(2, 3, 32, 32))
    assert isinstance(logits, torch.Tensor) and logits.shape == (2, 3)
    assert "HF_HUB_OFFLINE" not in os.environ and "TRANSFORMERS_OFFLINE" not in os.environ  # left alone


def test_hf_without_processor_config_says_what_was_assumed(tmp_path, offline_env):
    folder = _tiny_vit_folder(tmp_path / "vit", with_processor=False)
    with pytest.warns(MeaningfulPerturbationWarning) as caught:
        prep = load_model(f"hf:{folder}").preprocessing
    assert prep.size == (32, 32) and prep.mean == IMAGENET_MEAN and prep.crop == "none"
    assert prep.assumed is True and prep.to_dict()["assumed"] is True  # recorded in every summary
    assert [str(w.message) for w in caught] == [
        f"model spec 'hf:{folder}': the model does not state its preprocessing (no "
        "preprocessor_config.json); assumed whole image resized to 32x32 (aspect ratio not kept), "
        "mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225), bilinear; if it was trained "
        "otherwise, set --input-size, --resize, --mean and --std (Python API: resolve_preprocessing)"
    ]


def test_hf_cli_prints_the_assumed_preprocessing_and_records_it(tmp_path, offline_env, capsys):
    from PIL import Image

    from meaningful_perturbation.cli import main

    folder = _tiny_vit_folder(tmp_path / "vit", with_processor=False)
    Image.new("RGB", (40, 30), (120, 60, 30)).save(tmp_path / "a.png")
    out = tmp_path / "out"
    code = main(["explain", str(tmp_path / "a.png"), "--model", f"hf:{folder}", "--steps", "2",
                 "--out", str(out), "--device", "cpu"])
    assert code == 0
    err = capsys.readouterr().err
    notes = [line for line in err.splitlines() if "does not state its preprocessing" in line]
    assert len(notes) == 1 and notes[0].startswith(f"mperturb: warning: model spec 'hf:{folder}'")
    summary = json.loads((out / "a_summary.json").read_text())
    assert summary["preprocessing"]["assumed"] is True


def test_hf_user_setting_is_respected(offline_env, tmp_path):
    offline_env.setenv("TRANSFORMERS_OFFLINE", "1")
    offline_env.setenv("HF_HUB_OFFLINE", "1")
    folder = _tiny_vit_folder(tmp_path / "vit")
    load_model(f"hf:{folder}")
    assert os.environ["HF_HUB_OFFLINE"] == "1"


def test_hf_missing_model_fails_fast(tmp_path, offline_env):
    pytest.importorskip("transformers")
    offline_env.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="no usable model"):
        load_model(f"hf:{empty}")
    with pytest.raises(InputError) as info:
        load_model("hf:no-such-org-xyz/no-such-model-xyz", offline=True)
    assert str(info.value) == (
        "model spec 'hf:no-such-org-xyz/no-such-model-xyz': pretrained weights of the Hugging Face "
        f"repo no-such-org-xyz/no-such-model-xyz are not in the Hugging Face cache ({_hf_cache()}; set "
        "by HF_HOME or HF_HUB_CACHE) and downloads are off (--offline (Python API: offline=True)); run "
        "once without --offline to download them, save it with model.save_pretrained(FOLDER) and use "
        "hf:FOLDER, or pass a state-dict file with --weights FILE"
    )
    with pytest.raises(InputError, match=r"downloads are off \(HF_HUB_OFFLINE=1\); unset HF_HUB_OFFLINE to"):
        offline_env.setenv("HF_HUB_OFFLINE", "1")
        load_model("hf:no-such-org-xyz/no-such-model-xyz")
    with pytest.raises(InputError, match="no such folder"):
        load_model(f"hf:{tmp_path / 'absent'}")


def _hf_cache() -> str:
    from meaningful_perturbation.models.hub import _hf_cache_dir

    return _hf_cache_dir()


def test_hf_downloads_by_default_and_none_gives_random_weights(tmp_path, offline_env):
    """A hub id goes to transformers' from_pretrained without local_files_only (the library
    downloads into HF_HOME); --offline adds local_files_only=True; ID:NONE builds from the
    config alone, with random weights."""
    transformers = pytest.importorskip("transformers")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(99)  # the stand-in "pretrained" weights: not the fixed seed of :NONE
        folder = _tiny_vit_folder(tmp_path / "vit")
    calls: list = []
    auto = transformers.AutoModelForImageClassification
    real_pretrained, real_config = auto.from_pretrained, transformers.AutoConfig.from_pretrained

    def from_pretrained(source, **kwargs):
        calls.append(("model", source, kwargs.get("local_files_only", False)))
        return real_pretrained(str(folder), **kwargs)

    def config_from_pretrained(source, **kwargs):
        if source != str(folder):  # not transformers' own call on the stand-in folder
            calls.append(("config", source, kwargs.get("local_files_only", False)))
        return real_config(str(folder), **kwargs)

    offline_env.setattr(auto, "from_pretrained", from_pretrained)
    offline_env.setattr(transformers.AutoConfig, "from_pretrained", config_from_pretrained)
    offline_env.setattr(
        transformers.image_processing_utils.ImageProcessingMixin, "get_image_processor_dict",
        classmethod(lambda cls, source, **kw: ({"size": {"height": 32, "width": 32}}, {})),
    )  # fmt: skip
    a = load_model("hf:org/tiny")
    assert calls == [("model", "org/tiny", False)] and a.class_names == ("cat", "dog", "bird")
    calls.clear()
    load_model("hf:org/tiny", offline=True)
    assert calls == [("model", "org/tiny", True)]
    calls.clear()
    torch.manual_seed(12345)
    b = load_model("hf:org/tiny:NONE")
    assert calls == [("config", "org/tiny", False)]  # the config only: no weights fetched
    pa = dict(a.model.named_parameters())
    pb = dict(b.model.named_parameters())
    assert pa.keys() == pb.keys()
    assert not torch.equal(pa["model.classifier.weight"], pb["model.classifier.weight"])
    torch.manual_seed(777)  # :NONE weights come from a fixed seed, not the caller's generator
    c = load_model("hf:org/tiny:NONE")
    assert torch.equal(dict(c.model.named_parameters())["model.classifier.weight"], pb["model.classifier.weight"])


def test_hf_preprocessing_from_convnext_style_config():
    transformers = pytest.importorskip("transformers")
    from meaningful_perturbation.models.hub import _hf_preprocessing

    config = types.SimpleNamespace(id2label={0: "LABEL_0", 1: "LABEL_1"}, image_size=224)
    mixin = transformers.image_processing_utils.ImageProcessingMixin
    original = mixin.get_image_processor_dict
    try:
        mixin.get_image_processor_dict = classmethod(lambda cls, *a, **k: ({
            "size": {"shortest_edge": 224}, "crop_pct": 0.875, "resample": 3,
            "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225],
        }, {}))  # fmt: skip
        prep = _hf_preprocessing(transformers, "x", config, {})
    finally:
        mixin.get_image_processor_dict = original
    assert (prep.size, prep.resize, prep.crop, prep.interpolation) == ((224, 224), 256, "center", "bicubic")
    assert prep.class_names is None  # placeholder LABEL_i names carry no information


# ----------------------------------------------------------------------------------------------
# Missing libraries
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec, modules, package",
    [("torchvision:resnet18", ("torchvision", "torchvision.models"), "torchvision"),
     ("timm:resnet18", ("timm",), "timm"),
     ("hf:org/model", ("transformers",), "transformers")],
)  # fmt: skip
def test_missing_library_gives_install_hint(monkeypatch, spec, modules, package):
    for name in modules:
        monkeypatch.setitem(sys.modules, name, None)  # makes `import name` raise ImportError
    with pytest.raises(ConfigError) as info:
        load_model(spec)
    message = str(info.value)
    assert f"pip install {package}" in message and "\n" not in message


# ----------------------------------------------------------------------------------------------
# Stand-ins for the torchvision / timm APIs we call (our code paths, not theirs)
# ----------------------------------------------------------------------------------------------


def _fake_torchvision(monkeypatch, captured: dict) -> None:
    """torchvision's API as we call it; pretrained weights go through the real
    ``torch.hub.load_state_dict_from_url``, as torchvision's ``Weights.get_state_dict`` does."""
    import enum

    class _Transforms:
        crop_size, resize_size = [24], [28]
        mean, std = [0.4, 0.4, 0.4], [0.2, 0.2, 0.2]
        interpolation = types.SimpleNamespace(value="bicubic")

    class TinyWeights(enum.Enum):
        IMAGENET1K_V1 = "https://example.invalid/models/tiny-0123abcd.pth"
        DEFAULT = IMAGENET1K_V1  # an alias, as in torchvision

        @property
        def url(self):
            return self.value

        @property
        def meta(self):
            return {"categories": ["x", "y", "z"]}

        def transforms(self):
            return _Transforms()

        def get_state_dict(self, progress=True, check_hash=False):
            return torch.hub.load_state_dict_from_url(self.url, progress=progress, check_hash=check_hash)

    def get_model(name, weights=None, progress=True):
        captured["weights"] = weights
        captured["force_weights_only"] = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
        net = tiny_net()
        if weights is not None:
            net.load_state_dict(weights.get_state_dict(progress=progress))
        return net

    models = types.ModuleType("torchvision.models")
    models.list_models = lambda module=None: ["tiny"]
    models.get_model_weights = lambda name: TinyWeights
    models.get_model = get_model
    package = types.ModuleType("torchvision")
    package.models = models
    monkeypatch.setitem(sys.modules, "torchvision", package)
    monkeypatch.setitem(sys.modules, "torchvision.models", models)


@pytest.fixture()
def tv_hub(monkeypatch, tmp_path):
    """The torchvision stand-in, TORCH_HOME in tmp_path, and torch.hub's network call replaced
    by one that records its arguments and writes a state dict (or fails, when told to)."""
    captured: dict = {"downloads": [], "fail": None}
    _fake_torchvision(monkeypatch, captured)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    torch.manual_seed(7)
    captured["state"] = {k: v.clone() for k, v in tiny_net().state_dict().items()}

    def download_url_to_file(url, dst, hash_prefix=None, progress=True):
        captured["downloads"].append((url, dst, progress))
        if captured["fail"] is not None:
            raise captured["fail"]
        torch.save(captured["state"], dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", download_url_to_file)
    captured["cache"] = tmp_path / "torch_home" / "hub" / "checkpoints"
    return captured


def test_torchvision_offline_without_cache_names_the_torch_hub_cache(tv_hub):
    cache = tv_hub["cache"]
    with pytest.raises(InputError) as info:
        load_model("torchvision:tiny", offline=True)
    assert str(info.value) == (
        f"model spec 'torchvision:tiny': pretrained weights tiny-0123abcd.pth are not in the torch hub "
        f"cache ({cache}; set by TORCH_HOME) and downloads are off (--offline (Python API: offline=True)); "
        "run once without --offline to download them, put https://example.invalid/models/tiny-0123abcd.pth "
        "into that folder, or pass a state-dict file with --weights FILE"
    )
    assert "HF_" not in str(info.value) and tv_hub["downloads"] == []  # never reached the network


def test_torchvision_downloads_into_torch_home_like_torchvision(tv_hub, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a Hugging Face switch: not torchvision's business
    monkeypatch.delenv("TORCH_FORCE_WEIGHTS_ONLY_LOAD", raising=False)
    loaded = load_model("torchvision:tiny")
    target = tv_hub["cache"] / "tiny-0123abcd.pth"
    assert tv_hub["downloads"] == [("https://example.invalid/models/tiny-0123abcd.pth", str(target), True)]
    assert target.is_file() and tv_hub["force_weights_only"] == "1"  # read back weights-only
    assert "TORCH_FORCE_WEIGHTS_ONLY_LOAD" not in os.environ  # restored afterwards
    for key, value in tv_hub["state"].items():
        assert torch.equal(loaded.model.state_dict()[key], value)
    # Cached now: offline works and nothing is fetched again.
    again = load_model("torchvision:tiny", offline=True)
    assert len(tv_hub["downloads"]) == 1
    assert torch.equal(again.model.state_dict()["0.weight"], tv_hub["state"]["0.weight"])


def test_torchvision_progress_follows_quiet(tv_hub):
    load_model("torchvision:tiny", progress=False)
    assert [d[2] for d in tv_hub["downloads"]] == [False]


def test_torchvision_failed_download_is_one_clear_error(tv_hub):
    import urllib.error

    tv_hub["fail"] = urllib.error.URLError("[Errno -3] Temporary failure in name resolution")
    with pytest.raises(ModelError) as info:
        load_model("torchvision:tiny")
    assert str(info.value) == (
        f"model spec 'torchvision:tiny': downloading pretrained weights tiny-0123abcd.pth from "
        f"https://example.invalid/models/tiny-0123abcd.pth into the torch hub cache ({tv_hub['cache']}; set by "
        "TORCH_HOME) failed (URLError: <urlopen error [Errno -3] Temporary failure in name resolution>); check the "
        "network connection, or put the file into that folder, or pass a state-dict file with --weights FILE "
        "(':NONE' after the name: random weights)"
    )


def test_torchvision_cli_offline_flag(tv_hub, tmp_path, capsys):
    from meaningful_perturbation.cli import main

    from PIL import Image

    Image.new("RGB", (30, 30)).save(tmp_path / "a.png")
    code = main(["explain", str(tmp_path / "a.png"), "--model", "torchvision:tiny", "--offline",
                 "--out", str(tmp_path / "o"), "-q"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and tv_hub["downloads"] == []
    assert err[0].startswith("mperturb: error: model spec 'torchvision:tiny': pretrained weights "
                             "tiny-0123abcd.pth are not in the torch hub cache")


def test_torchvision_code_path_with_stand_in(tv_hub):
    captured = tv_hub
    loaded = load_model("torchvision:tiny", offline=False)
    assert captured["weights"] is not None
    prep = loaded.preprocessing
    assert (prep.size, prep.resize, prep.interpolation) == ((24, 24), 28, "bicubic")
    assert prep.class_names == ("x", "y", "z")
    loaded = load_model("torchvision:tiny:NONE", offline=True)  # random weights: no cache needed
    assert captured["weights"] is None and loaded.class_names == ("x", "y", "z")
    with pytest.raises(ConfigError, match="IMAGENET1K_V1"):
        load_model("torchvision:tiny:V9")
    with pytest.raises(ConfigError, match="did you mean tiny"):
        load_model("torchvision:tinyy")


def test_timm_code_path_with_stand_in(monkeypatch, tmp_path):
    calls: list = []
    timm = types.ModuleType("timm")
    timm.is_model = lambda name: name.split(".")[0] == "tiny"
    timm.list_models = lambda: ["tiny"]

    def create_model(name, pretrained=False, **kwargs):
        calls.append((name, pretrained, kwargs, os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")))
        return tiny_net()

    progress: list = []
    timm.create_model = create_model
    timm.models = types.SimpleNamespace(
        get_pretrained_cfg=lambda name: types.SimpleNamespace(
            file=None, url=None, hf_hub_id="timm/tiny.test", hf_hub_filename=None
        ),
        set_pretrained_download_progress=lambda enable=True: progress.append(enable),
    )
    timm.data = types.SimpleNamespace(
        resolve_model_data_config=lambda model: {
            "input_size": (3, 24, 24), "crop_pct": 0.75, "crop_mode": "center",
            "interpolation": "bicubic", "mean": (0.5,) * 3, "std": (0.5,) * 3,
        },
        infer_imagenet_subset=lambda model: None,
    )  # fmt: skip
    monkeypatch.setitem(sys.modules, "timm", timm)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    import huggingface_hub

    cached: dict = {}
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache",
                        lambda repo, name, revision=None: cached.get((repo, name)))
    from meaningful_perturbation.models.hub import _hf_cache_dir

    # Offline and not cached: refused before timm is asked for anything.
    with pytest.raises(InputError) as info:
        load_model("timm:tiny", offline=True)
    assert str(info.value) == (
        "model spec 'timm:tiny': pretrained weights of the Hugging Face repo timm/tiny.test are not in the "
        f"Hugging Face cache ({_hf_cache_dir()}; set by HF_HOME or HF_HUB_CACHE) and downloads are off "
        "(--offline (Python API: offline=True)); run once without --offline to download them, or pass a "
        "state-dict file with --weights FILE"
    )
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the user's own Hugging Face switch counts too
    with pytest.raises(InputError, match=r"downloads are off \(HF_HUB_OFFLINE=1\); unset HF_HUB_OFFLINE to "):
        load_model("timm:tiny")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    assert calls == []
    # Online (the default): timm itself downloads, weights-only, with its progress bar.
    load_model("timm:tiny")
    assert calls == [("tiny", True, {}, "1")] and progress == [True]
    load_model("timm:tiny", progress=False)
    assert progress == [True, False]
    # Offline with the file in the cache: timm is pointed at it, no hub lookup.
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"x")
    cached[("timm/tiny.test", "model.safetensors")] = str(weights)
    calls.clear()
    load_model("timm:tiny", offline=True)
    assert calls == [("tiny", True, {"pretrained_cfg_overlay": {"file": str(weights), "source": ""}}, "1")]
    # Random weights and --weights FILE: pretrained=False.
    calls.clear()
    load_model("timm:tiny:NONE", offline=True)
    path = tmp_path / "w.pt"
    torch.save(tiny_net().state_dict(), path)
    loaded = load_model("timm:tiny", weights=path)
    assert [c[1] for c in calls] == [False, False]
    assert (loaded.preprocessing.size, loaded.preprocessing.resize) == ((24, 24), 32)
    with pytest.raises(ConfigError, match="timm has no model"):
        load_model("timm:huge")


def test_assumed_preprocessing_warning_names_only_what_is_still_assumed(factory_file):
    import warnings

    spec = f"python:{factory_file}:build_plain"
    with pytest.warns(MeaningfulPerturbationWarning) as caught:
        load_model(spec, trust_code=True, given=("input_size", "resize"))
    assert [str(w.message) for w in caught] == [
        f"model spec {spec!r}: the model does not state its preprocessing (the factory returned no preprocessing); "
        "assumed mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225); if it was trained otherwise, "
        "set --mean and --std (Python API: resolve_preprocessing)"
    ]
    with pytest.warns(MeaningfulPerturbationWarning) as caught:
        load_model(spec, trust_code=True, given=("input_size", "mean", "std"))
    text = str(caught[0].message)
    assert "assumed short side resized to 256/224 of the input size, centre crop; if it was trained otherwise, set --resize (" in text
    assert "crop 224" not in text
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_model(spec, trust_code=True, given=("input_size", "resize", "mean", "std"))  # nothing assumed: silent


def test_cli_assumed_preprocessing_warning_respects_input_size_and_resize(factory_file, tmp_path, capsys):
    from PIL import Image

    from meaningful_perturbation.cli import main

    Image.new("RGB", (40, 30), (120, 60, 30)).save(tmp_path / "a.png")
    assert main(["explain", str(tmp_path / "a.png"), "--model", f"python:{factory_file}:build_plain", "--trust-code",
                 "--input-size", "32", "--resize", "32", "--method", "gradient", "--out", str(tmp_path / "o"),
                 "--device", "cpu", "-q"]) == 0
    notes = [ln for ln in capsys.readouterr().err.splitlines() if "does not state its preprocessing" in ln]
    assert len(notes) == 1 and "resized to 256" not in notes[0] and "crop 224" not in notes[0]
    assert notes[0].endswith("set --mean and --std"), notes  # the CLI drops the Python spelling (cli_text)
