"""The masking model of Dabkowski & Gal (2017): the frozen classifier's own features feed a
small decoder that outputs a keep-mask in one forward pass.

Paper §3 ("masking model"): an encoder (the classifier's feature layers, not fine-tuned), a
*feature filter* that multiplies the deepest features by an embedding of the selected class
(the "class selector"), and an upsampling decoder with skip connections from shallower
encoder layers ending in a one-channel mask at a fraction of the image resolution, which is
upsampled to the image. Here the encoder is any ``nn.Module`` classifier tapped by module name
(:class:`FeatureTap`), the decoder is :class:`MaskerNet`, and the upsampling to the image is
the project's :class:`~meaningful_perturbation.core.mask.UpsampledMask`.

A masker is bound to one classifier: :func:`classifier_fingerprint` records the class count,
the input size, the tapped layer names and a SHA-256 of the tapped layers' parameters and
buffers, and :func:`check_fingerprint` refuses a masker used with another classifier.
"""

from __future__ import annotations

import hashlib
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError, ModelError

__all__ = ["MaskerNet", "FeatureTap", "find_layer", "classifier_fingerprint", "check_fingerprint", "head_module", "head_digest"]


def find_layer(model: nn.Module, name: str, *, purpose: str | None = None) -> nn.Module:
    """The submodule called ``name`` (as in ``model.named_modules()``).

    A model wrapped by another module (e.g. a resizing wrapper holding it as ``.model``) is
    searched too: a unique submodule whose name ends with ``"." + name`` is accepted.

    ``purpose`` (e.g. "masker: 'm.safetensors' was trained for another classifier") replaces
    the generic "not a layer" wording when the name comes from a stored masker.

    Raises:
        ModelError: no such layer, or the suffix is ambiguous; the message lists a few names.
    """
    if not isinstance(model, nn.Module):
        raise ModelError(f"model: expected a torch.nn.Module to read features from, got {type(model).__name__}")
    modules = dict(model.named_modules())
    if name in modules and name != "":
        return modules[name]
    hits = [k for k in modules if k.endswith("." + name)]
    if len(hits) == 1:
        return modules[hits[0]]
    some = ", ".join(k for k in list(modules)[1:12])
    if purpose:
        raise ModelError(f"{purpose}: it needs the layer {name!r}, which this model does not have (a masker is bound to "
                         f"the classifier it was trained for); train a masker for this model (mperturb train-masker "
                         f"--model ...). This model's layers include {some}")
    why = f"several layers end with {name!r}: {', '.join(hits[:5])}" if hits else "no such module"
    raise ModelError(f"layers: {name!r} is not a layer of the classifier ({why}); expected a name from "
                     f"model.named_modules(), e.g. {some}")


class FeatureTap:
    """Forward hooks collecting the outputs of named layers during one classifier pass.

    Args:
        model: the classifier (``nn.Module``).
        layers: module names, **deepest first** (the first one gets the class filter).

    ``tap(x)`` runs ``model(x)`` once without gradients and returns ``(logits, feats)``: the
    model's output and a list of ``(N, C_i, h_i, w_i)`` tensors in the order of ``layers``.
    The hooks exist only during the call, and outputs are cloned (a later in-place layer
    cannot change them).

    Raises:
        ModelError: a layer is missing, or its output is not a 4-d tensor.
    """

    def __init__(self, model: nn.Module, layers: Sequence[str], *, purpose: str | None = None) -> None:
        self.model = model
        self.layers = tuple(layers)
        self.modules = [find_layer(model, name, purpose=purpose) for name in self.layers]

    def __call__(self, x: torch.Tensor) -> tuple[Any, list[torch.Tensor]]:
        store: dict[int, torch.Tensor] = {}
        handles = []

        def hook(i: int):
            def fn(_module, _inputs, output):
                # Cloned now: a later in-place layer (ReLU(inplace=True), +=) cannot change it.
                store[i] = output.detach().clone() if isinstance(output, torch.Tensor) else output

            return fn

        for i, m in enumerate(self.modules):
            handles.append(m.register_forward_hook(hook(i)))
        try:
            with torch.no_grad():
                out = self.model(x)
                feats = []
                for i, name in enumerate(self.layers):
                    f = store.get(i)
                    if not isinstance(f, torch.Tensor) or f.dim() != 4:
                        got = "no output" if f is None else (f"tensor {tuple(f.shape)}" if isinstance(f, torch.Tensor) else type(f).__name__)
                        raise ModelError(f"layers: layer {name!r} must output an (N, C, h, w) feature map, got {got}")
                    feats.append(f.float())
        finally:
            for h in handles:
                h.remove()
        return out, feats

    def parameters_digest(self) -> str:
        return _digest(self.modules)


def _digest(modules: Sequence[nn.Module]) -> str:
    h = hashlib.sha256()
    for m in modules:
        for key, t in sorted(m.state_dict().items()):
            h.update(key.encode())
            h.update(str(tuple(t.shape)).encode())
            h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


def head_module(model: nn.Module) -> tuple[str, nn.Module] | None:
    """The classifier's head: the last module (in ``named_modules()`` order) that holds
    parameters of its own, e.g. the final ``nn.Linear`` producing the class scores; ``None``
    for a model without parameters."""
    last = None
    for name, m in model.named_modules():
        if any(True for _ in m.parameters(recurse=False)):
            last = (name, m)
    return last


def head_digest(model: nn.Module) -> str | None:
    """SHA-256 of the head's (:func:`head_module`) parameters and buffers, as the tapped
    layers' digest; ``None`` without a head."""
    h = head_module(model)
    return None if h is None else _digest([h[1]])


def classifier_fingerprint(model: nn.Module, layers: Sequence[str], num_classes: int, input_size: Sequence[int]) -> dict[str, Any]:
    """What binds a masker to its classifier (stored with the weights).

    Returns:
        ``{"classes": int, "input_size": [H, W], "layers": [...], "params_sha256": hex,
        "head": name, "head_sha256": hex}``: ``params_sha256`` over the tapped layers' state
        dicts (parameters and buffers, float32 bytes, keys sorted), ``head_sha256`` the same
        over the classifier's head (the last module with parameters, e.g. the final Linear),
        so a re-initialised or fine-tuned head is refused too although the tapped features
        are unchanged. The same weights give the same digests on any device.
    """
    tap = FeatureTap(model, layers)
    head = head_module(model)
    fp = {
        "classes": int(num_classes),
        "input_size": [int(input_size[0]), int(input_size[1])],
        "layers": list(layers),
        "params_sha256": tap.parameters_digest(),
    }
    if head is not None:
        fp["head"] = head[0]
        fp["head_sha256"] = _digest([head[1]])
    return fp


_DIGEST_CACHE: dict[tuple, str] = {}


def check_fingerprint(fingerprint: dict[str, Any], model: nn.Module, num_classes: int | None, input_size: Sequence[int] | None, *,
                      where: str, option: str = "x") -> None:
    """Refuse a masker trained for another classifier, or images of another size.

    ``num_classes`` / ``input_size`` ``None``: not checked (an up-front check before any
    image is read). ``option`` names the argument in the input-size error.

    Raises:
        InputError: ``input_size`` differs from the masker's (resize the images, or train at that size).
        ModelError: class count, layers, the tapped layers' weights or the head's weights differ.
    """
    if num_classes is not None and int(num_classes) != int(fingerprint["classes"]):
        raise ModelError(
            f"masker: {where} was trained for a classifier with {fingerprint['classes']} classes, this model outputs "
            f"{num_classes}; train a masker for this model (mperturb train-masker --model ...)")
    tap = FeatureTap(model, fingerprint["layers"], purpose=f"masker: {where} was trained for another classifier")
    key = tuple((id(m), tuple((p.data_ptr(), p._version) for p in m.state_dict().values())) for m in tap.modules)
    digest = _DIGEST_CACHE.get(key)
    if digest is None:
        digest = tap.parameters_digest()
        _DIGEST_CACHE.clear()
        _DIGEST_CACHE[key] = digest
    if digest != fingerprint["params_sha256"]:
        raise ModelError(
            f"masker: {where} was trained for another classifier: the weights of layers "
            f"{', '.join(fingerprint['layers'])} differ (SHA-256 {digest[:12]}... vs {fingerprint['params_sha256'][:12]}... "
            "recorded at training); train a masker for this model (mperturb train-masker --model ...)")
    if "head_sha256" in fingerprint:  # maskers written before the head was fingerprinted lack it
        head = head_module(model)
        got = None if head is None else _digest([head[1]])
        if got != fingerprint["head_sha256"]:
            raise ModelError(
                f"masker: {where} was trained for another classifier: its head ({fingerprint.get('head', '?')!r}, the last "
                f"layer with weights) differs from this model's ({head[0] if head else None!r}; re-initialised or fine-tuned?); "
                "train a masker for this model (mperturb train-masker --model ...)")
    # After the classifier checks: the size advice is wrong for a masker of another classifier.
    if input_size is not None:
        size = [int(input_size[0]), int(input_size[1])]
        if size != list(fingerprint["input_size"]):
            h, w = fingerprint["input_size"]
            raise InputError(
                f"{option}: the masker {where} was trained on {h}x{w} images, got {size[0]}x{size[1]}; resize the images "
                f"to {h}x{w} (--input-size {h}), or train a masker at {size[0]} px (mperturb train-masker --data "
                f"shapes:{size[0]} ..., or NAME:{size[0]} for another ground-truth family)")


def _conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class MaskerNet(nn.Module):
    """Decoder of the masking model (Dabkowski & Gal 2017, §3).

    Args:
        channels: channels of the tapped features, deepest first.
        num_classes: classes of the classifier (size of the class embedding table).
        width: channels of the decoder.

    Shapes:
        ``feats``: list of ``(N, channels[i], h_i, w_i)``, deepest (smallest) first;
        ``classes``: ``(N,)`` long → ``(N, 1, h_last, w_last)`` mask *logits* at the
        resolution of the last (shallowest) tapped layer; ``sigmoid`` gives the keep-mask.

    The deepest features are projected to ``width`` channels and multiplied by the class
    embedding (the paper's feature filter: the mask depends on the selected class); each
    following stage upsamples bilinearly, adds the projected skip features and refines with
    a 3×3 conv; a 3×3 conv ends in one channel.
    """

    def __init__(self, channels: Sequence[int], num_classes: int, width: int = 32) -> None:
        super().__init__()
        if not channels:
            raise InputError("layers: expected at least one layer name, got none")
        self.embed = nn.Embedding(int(num_classes), width)
        nn.init.normal_(self.embed.weight, mean=1.0, std=0.5)
        self.proj = nn.ModuleList(nn.Conv2d(int(c), width, 1) for c in channels)
        self.refine = nn.ModuleList(_conv(width, width) for _ in channels)
        self.head = nn.Conv2d(width, 1, 3, padding=1)

    def forward(self, feats: Sequence[torch.Tensor], classes: torch.Tensor) -> torch.Tensor:
        y = self.proj[0](feats[0]) * self.embed(classes)[:, :, None, None]
        y = self.refine[0](y)
        for proj, refine, f in zip(self.proj[1:], self.refine[1:], feats[1:]):
            y = F.interpolate(y, size=f.shape[-2:], mode="bilinear", align_corners=False) + proj(f)
            y = refine(y)
        return self.head(y)
