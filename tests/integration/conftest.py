"""Integration tests against real torchvision and timm models (random weights, real photos).

They run in the second environment that ``.ci/run`` builds (torch==2.13.0 from the registry,
torchvision==0.28.0, timm): ``python -m pytest -q -m integration tests/integration``. The
main suite deselects them (``-m "not integration"`` in pyproject's addopts); run without
torchvision or timm they skip, unless ``MPERTURB_REQUIRE_INTEGRATION=1`` (set by ``.ci/run``)
makes a missing library a failure, so CI cannot pass by skipping everything.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import pytest

PHOTOS = ("chelsea", "astronaut", "coffee")  # photos shipped inside scikit-image (skimage.data)


def _need(module: str):
    if os.environ.get("MPERTURB_REQUIRE_INTEGRATION") == "1":
        return importlib.import_module(module)  # ImportError = a failure in CI
    return pytest.importorskip(module, reason=f"{module} is not installed (integration environment only)")


@pytest.fixture(scope="session")
def tv():
    _need("torchvision")
    import torchvision.models

    return torchvision.models


@pytest.fixture(scope="session")
def timm_lib():
    _need("timm")
    import timm
    import timm.data

    return timm


@pytest.fixture(scope="session")
def photos(tmp_path_factory) -> dict[str, Path]:
    """chelsea (a tabby cat), astronaut and coffee as lossless PNG files in one folder."""
    skdata = _need("skimage.data")
    from PIL import Image

    folder = tmp_path_factory.mktemp("photos")
    paths = {}
    for name in PHOTOS:
        paths[name] = folder / f"{name}.png"
        Image.fromarray(getattr(skdata, name)()).convert("RGB").save(paths[name])
    return paths


@pytest.fixture(autouse=True)
def _no_hub(monkeypatch, tmp_path_factory):
    """Random weights only: point every hub cache at an empty folder and forbid downloads, so
    a test that would fetch weights fails instead of silently using the network."""
    cache = tmp_path_factory.getbasetemp() / "hub-cache"
    monkeypatch.setenv("TORCH_HOME", str(cache / "torch"))
    monkeypatch.setenv("HF_HOME", str(cache / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
