"""Trust model (docs/security.md): a model source that can run code loads only with
``--trust-code`` / ``trust_code=True``; everything else stays flag-free; a damaged weights
file is one clear error naming it.

Every code-executing kind is checked with a *marker* side effect: the hostile payload creates
a file when it runs. Without the flag the marker must not exist afterwards (the refusal comes
before the contents are read) and the message must name ``--trust-code``; with the flag the
source loads.
"""

from __future__ import annotations

import io
import json
import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from meaningful_perturbation.cli import main
from meaningful_perturbation.errors import ConfigError, InputError
from meaningful_perturbation.models import apply_state_dict, load_model, load_state_dict_file
from meaningful_perturbation.models.base import weights_only_loads

TRUST = "pass --trust-code (Python API: load_model(..., trust_code=True)) only if you trust it"


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).mean((2, 3)))


def _touch_and_return(marker: Path, value_code: str) -> str:
    """Python source for eval(): create ``marker``, then evaluate to ``value_code``."""
    return f"__import__('pathlib').Path({str(marker)!r}).touch() or {value_code}"


class _Payload:
    """Unpickling this runs ``eval(code)``: the classic pickle code-execution gadget."""

    def __init__(self, code: str) -> None:
        self.code = code

    def __reduce__(self):
        return (eval, (self.code,))


# ----------------------------------------------------------------------------------------------
# Each code-executing kind: refused without the flag (nothing ran), loads with it
# ----------------------------------------------------------------------------------------------


def test_python_factory_needs_trust_code(tmp_path):
    marker = tmp_path / "RAN"
    f = tmp_path / "evil.py"
    f.write_text(
        f"import pathlib, torch\npathlib.Path({str(marker)!r}).touch()\n"
        "def build():\n    return torch.nn.Sequential(torch.nn.Conv2d(3, 2, 1), torch.nn.Flatten(1))\n"
    )
    with pytest.raises(ConfigError) as info:
        load_model(f"python:{f}:build")
    assert str(info.value) == (
        f"model spec 'python:{f}:build': a Python factory can run code when loaded (importing "
        f"{f} and calling build() runs its code); {TRUST}"
    )
    assert not marker.exists()
    load_model(f"python:{f}:build", trust_code=True)
    assert marker.exists()


def test_missing_python_file_is_reported_before_trust(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        load_model(f"python:{tmp_path / 'absent.py'}:build")


@pytest.fixture(scope="module")
def evil_export(tmp_path_factory):
    """A valid ``.pt2`` whose ``conv.bias`` is stored as a pickle that creates a marker."""
    d = tmp_path_factory.mktemp("pt2")
    marker = d / "RAN"
    good = d / "tiny.pt2"
    program = torch.export.export(Tiny().eval(), (torch.randn(1, 3, 8, 8),))
    torch.export.save(program, str(good))
    buf = io.BytesIO()
    torch.save(_Payload(_touch_and_return(marker, "__import__('torch').nn.Parameter(__import__('torch').zeros(4))")), buf)
    evil = d / "evil.pt2"
    with zipfile.ZipFile(good) as z, zipfile.ZipFile(evil, "w", zipfile.ZIP_STORED) as out:
        cfg_name = next(n for n in z.namelist() if n.endswith("weights_config.json"))
        cfg = json.loads(z.read(cfg_name))
        cfg["config"]["conv.bias"]["use_pickle"] = True
        target = cfg["config"]["conv.bias"]["path_name"]
        for n in z.namelist():
            data = z.read(n)
            if n == cfg_name:
                data = json.dumps(cfg).encode()
            elif n.endswith("weights/" + target):
                data = buf.getvalue()
            out.writestr(n, data)
    return evil, marker


def test_export_archive_needs_trust_code(evil_export):
    evil, marker = evil_export
    with pytest.raises(ConfigError) as info:
        load_model(f"export:{evil}")
    assert str(info.value) == (
        f"model spec 'export:{evil}': a torch.export archive can run code when loaded "
        f"(torch.export.load unpickles parts of it and runs the program stored in it); {TRUST}; "
        "to run only your own code, use python:FILE.py:FACTORY with --weights FILE.safetensors"
    )
    assert not marker.exists()
    loaded = load_model(f"export:{evil}", trust_code=True)  # the user said yes: it runs
    assert marker.exists() and loaded.model(torch.zeros(1, 3, 8, 8)).shape == (1, 6)


def test_torchscript_needs_trust_code_and_is_not_opened_without(tmp_path, monkeypatch):
    path = tmp_path / "m.pt"
    torch.jit.save(torch.jit.script(Tiny().eval()), str(path))
    opened = []
    real = torch.jit.load
    monkeypatch.setattr(torch.jit, "load", lambda *a, **k: opened.append(a) or real(*a, **k))
    with pytest.raises(ConfigError) as info:
        load_model(f"torchscript:{path}")
    assert "a TorchScript archive can run code when loaded" in str(info.value)
    assert TRUST in str(info.value)
    assert opened == []  # refused before torch.jit.load saw the file
    loaded = load_model(f"torchscript:{path}", trust_code=True)
    assert len(opened) == 1 and loaded.model(torch.zeros(1, 3, 8, 8)).shape == (1, 6)


@pytest.mark.parametrize("nested", [False, True])
def test_pickled_weights_need_trust_code(tmp_path, nested):
    marker = tmp_path / "RAN"
    state = {k: v + 1 for k, v in Tiny().state_dict().items()}
    code = _touch_and_return(marker, "__import__('torch').zeros(4)")
    payload = dict(state, **{"conv.bias": _Payload(code)})
    path = tmp_path / "ckpt.pt"
    torch.save({"epoch": 1, "state_dict": payload} if nested else payload, path)
    with pytest.raises(ConfigError) as info:
        load_state_dict_file(path)
    assert str(info.value) == (
        f"{path}: not a plain weights file: it holds pickled Python objects (e.g. a whole model "
        "saved with torch.save(model)) and unpickling can run code; save model.state_dict() or a "
        ".safetensors file instead, or pass --trust-code (Python API: load_model(..., "
        "trust_code=True)) only if you trust the file"
    )
    assert not marker.exists()
    loaded = load_state_dict_file(path, trust_code=True)
    assert marker.exists() and torch.equal(loaded["conv.bias"], torch.zeros(4))


def test_pickled_full_model_needs_trust_code(tmp_path):
    path = tmp_path / "full.pt"
    donor = Tiny()
    torch.save(donor, path)
    with pytest.raises(ConfigError, match="--trust-code"):
        load_state_dict_file(path)
    assert torch.equal(load_state_dict_file(path, unsafe_pickle=True)["fc.bias"], donor.fc.bias)


def test_hf_remote_code_needs_trust_code(tmp_path):
    pytest.importorskip("transformers")
    marker = tmp_path / "RAN"
    folder = tmp_path / "hf_custom"
    folder.mkdir()
    (folder / "modeling_evil.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n")
    (folder / "config.json").write_text(json.dumps({
        "model_type": "evil", "architectures": ["EvilModel"],
        "auto_map": {"AutoConfig": "modeling_evil.EvilConfig",
                     "AutoModelForImageClassification": "modeling_evil.EvilModel"},
    }))  # fmt: skip
    with pytest.raises(ConfigError) as info:
        load_model(f"hf:{folder}")
    assert str(info.value) == (
        f"model spec 'hf:{folder}': a Hugging Face model with custom code can run code when "
        "loaded (its config.json names AutoConfig=modeling_evil.EvilConfig, "
        "AutoModelForImageClassification=modeling_evil.EvilModel, which transformers imports "
        f"with trust_remote_code); {TRUST}"
    )
    assert not marker.exists()


def test_zoo_checkpoints_are_read_weights_only(tmp_path):
    """torch.hub reads cached zoo checkpoints with weights_only=False; the guard overrides it."""
    marker = tmp_path / "RAN"
    path = tmp_path / "resnet-cafe.pth"
    torch.save({"w": _Payload(_touch_and_return(marker, "1"))}, path)
    with weights_only_loads(False):
        with pytest.raises(pickle.UnpicklingError):
            torch.load(path, weights_only=False)
    assert not marker.exists()
    with weights_only_loads(True):
        torch.load(path, weights_only=False)
    assert marker.exists()


# ----------------------------------------------------------------------------------------------
# Sources that cannot run code stay flag-free
# ----------------------------------------------------------------------------------------------


def test_plain_weights_need_no_flag(tmp_path):
    from safetensors.torch import save_file

    from meaningful_perturbation import demo

    donor = demo.load_demo_model()
    with torch.no_grad():
        for p in donor.parameters():
            p.mul_(0.5)
    state = {k: v.contiguous() for k, v in donor.state_dict().items()}
    for path in (tmp_path / "w.safetensors", tmp_path / "w.pt"):
        save_file(state, str(path)) if path.suffix == ".safetensors" else torch.save(state, path)
        model = load_model("demo", weights=path).model
        assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


# ----------------------------------------------------------------------------------------------
# Damaged weights files: one InputError naming the file
# ----------------------------------------------------------------------------------------------


def _safetensors_bytes(header: dict, data: bytes) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


def _valid_safetensors(tmp_path) -> bytes:
    from safetensors.torch import save_file

    path = tmp_path / "valid.safetensors"
    save_file({k: v.contiguous() for k, v in Tiny().state_dict().items()}, str(path))
    return path.read_bytes()


@pytest.mark.parametrize("damage, reason", [
    (lambda ok: b"garbage!" * 10, "the header claims"),
    (lambda ok: ok[:5], "5 bytes, too short for the 8-byte header length"),
    (lambda ok: ok[: len(ok) // 2], "outside the"),  # truncated data section
    (lambda ok: ok[:40], "the header claims"),  # truncated header
    (lambda ok: struct.pack("<Q", 2**62) + b"{}", "the header claims 4611686018427387904 bytes"),
    (lambda ok: _safetensors_bytes({"w": {"dtype": "F99", "shape": [2], "data_offsets": [0, 8]}}, bytes(8)),
     "tensor 'w' has unknown dtype 'F99'"),
    (lambda ok: _safetensors_bytes({"w": {"dtype": "F32", "shape": [2**40, 2**40], "data_offsets": [0, 8]}},
                                   bytes(8)), "tensor 'w': shape [1099511627776, 1099511627776] of F32 needs"),
    (lambda ok: _safetensors_bytes({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 2**50]}}, bytes(8)),
     "tensor 'w' has data offsets [0, 1125899906842624] outside the 8-byte data section"),
    (lambda ok: _safetensors_bytes({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, bytes(4)),
     "tensor 'w' has an invalid shape [-1]"),
    (lambda ok: _safetensors_bytes([1, 2], b""), "header is a JSON list, expected an object"),
    (lambda ok: struct.pack("<Q", 4) + b"\xff\xfe{}", "header is not JSON"),
])  # fmt: skip
def test_damaged_safetensors_is_one_input_error(tmp_path, damage, reason):
    path = tmp_path / "w.safetensors"
    path.write_bytes(damage(_valid_safetensors(tmp_path)))
    with pytest.raises(InputError) as info:
        load_state_dict_file(path)
    message = str(info.value)
    assert message.startswith(f"{path}: not a readable safetensors file (")
    assert reason in message
    assert message.endswith("expected a file written by safetensors.torch.save_file(model.state_dict(), path)")


@pytest.mark.parametrize("content", [b"PK\x03\x04" + bytes(60), b"\x80\x02" + bytes(30), bytes(100)])
def test_damaged_torch_files_are_one_input_error(tmp_path, content):
    path = tmp_path / "w.pt"
    path.write_bytes(content)
    with pytest.raises(InputError, match=r"^.*w\.pt: not a (plain )?PyTorch weights file \("):
        load_state_dict_file(path)


def test_wrong_dtype_and_keys_are_listed():
    model = Tiny()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["conv.weight"] = state["conv.weight"].to(torch.int32)
    state["fc.bias"] = torch.zeros(2, dtype=torch.bool)
    with pytest.raises(InputError) as info:
        apply_state_dict(model, state, source="w.safetensors")
    assert str(info.value) == (
        "w.safetensors: weights do not fit the model (1 shape mismatch(es): fc.bias (file (2,) vs "
        "model (6,)); 2 non-float tensor(s) for float parameters: conv.weight (file int32 vs model "
        "float32), fc.bias (file bool vs model float32)); check that the file was saved from the "
        "same architecture"
    )


# ----------------------------------------------------------------------------------------------
# The command line: one line, exit 2, nothing ran
# ----------------------------------------------------------------------------------------------


@pytest.fixture()
def image(tmp_path) -> Path:
    path = tmp_path / "img.png"
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(path)
    return path


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("mperturb: error: ") and err.count("\n") == 1 and "Traceback" not in err
    return err


def test_cli_refuses_code_without_flag(tmp_path, image, capsys):
    marker = tmp_path / "RAN"
    f = tmp_path / "m.py"
    f.write_text(
        f"import pathlib, torch\npathlib.Path({str(marker)!r}).touch()\n"
        "def build():\n    return torch.nn.Sequential(torch.nn.Conv2d(3, 6, 1), torch.nn.AdaptiveAvgPool2d(1),"
        " torch.nn.Flatten())\n"
    )
    for command in ("explain", "run"):
        out = tmp_path / f"out-{command}"
        source = str(image) if command == "explain" else str(image.parent)
        rc = main([command, source, "--model", f"python:{f}:build", "--steps", "1", "--out", str(out), "-q"])
        assert rc == 2
        assert "--trust-code" in _one_error_line(capsys)
        assert not marker.exists()
    for flag in ("--trust-code", "--unsafe-pickle"):  # the old name is an alias
        out = tmp_path / f"ok{flag}"
        assert main(["explain", str(image), "--model", f"python:{f}:build", flag, "--steps", "1",
                     "--out", str(out), "-q"]) == 0, capsys.readouterr().err
        assert marker.exists()
        summary = json.loads((out / "config.json").read_text())
        assert summary["settings"]["trust_code"] is True


def test_cli_bad_safetensors_is_one_line(tmp_path, image, capsys):
    bad = tmp_path / "w.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    rc = main(["explain", str(image), "--weights", str(bad), "--steps", "1", "--out", str(tmp_path / "o"), "-q"])
    assert rc == 2
    err = _one_error_line(capsys)
    assert f"{bad}: not a readable safetensors file (header is not JSON" in err
