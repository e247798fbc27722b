"""The public entry point :func:`explain`."""

from __future__ import annotations

import os
from typing import Any, Callable

import torch

from ._runtime import check_seed
from ._validate import check_images
from .core.frozen import frozen, modules_of
from .core.head import check_head_option
from .core.objective import Targets
from .core.precision import working_dtype
from .errors import InputError, MeaningfulPerturbationError, MeaningfulPerturbationWarning, ModelError
from .explanation import Explanation
from .methods.common import Context
from .methods.registry import get_method, resolve_config
from .targets import clean_scores, resolve_target

__all__ = ["explain", "mirror_config", "mirror_invariant"]

#: Model attribute declaring whether the class is unchanged by a horizontal mirror. Absent:
#: assumed invariant (ImageNet classifiers; the 2019 reference code flips on odd steps).
MIRROR_INVARIANT_ATTR = "mirror_invariant"
#: The note and warning about flip jitter on a model whose class changes under a mirror.
FLIP_NOTE = ("{method}: jitter 'flip' -> 'none': the model declares it is not mirror-invariant "
             "(its class changes under a horizontal mirror), so flipped steps would optimise against another class")
FLIP_WARNING = ("{method}: jitter='flip' on a model that declares it is not mirror-invariant: every other step "
                "optimises the mirrored image, whose class differs; use jitter='none' (the default for this model)")


def mirror_invariant(model: Any) -> bool:
    """False when ``model`` (or any submodule, e.g. a wrapped model) declares
    ``mirror_invariant = False`` (the demo model of a family whose labels change under a
    mirror, ``demo:textures``); True otherwise (undeclared models are assumed invariant).

    Example:
        >>> m = torch.nn.Linear(2, 2)
        >>> mirror_invariant(m), setattr(m, "mirror_invariant", False), mirror_invariant(m)
        (True, None, False)
    """
    mods = [m for root in modules_of(model) for m in root.modules()] or [model]  # a lambda: its modules
    return all(getattr(m, MIRROR_INVARIANT_ATTR, True) is not False for m in mods)


def mirror_config(model: Any, config: dict[str, Any], overrides: Any) -> dict[str, Any]:
    """A method config (``config_as_dict``) as :func:`explain` will run it on ``model``:
    ``jitter`` ``"flip"`` becomes ``"none"`` when the model is not mirror-invariant and
    ``overrides`` (the user's settings) do not set ``jitter``. For records written before the
    run (the CLI's ``config.json``, a run's ``settings.json``)."""
    if config.get("jitter") == "flip" and "jitter" not in overrides and not mirror_invariant(model):
        return {**config, "jitter": "none"}
    return config


def _mirror_jitter(spec: Any, cfg: Any, overrides: dict[str, Any], model: Any, method: str) -> Any:
    """``cfg`` with flip jitter turned off (and a note) when the model is not mirror-invariant
    and the flip is the method's default; a warning when the user asked for it."""
    import dataclasses
    import warnings

    if getattr(cfg, "jitter", None) != "flip" or mirror_invariant(model):
        return cfg
    if "jitter" in overrides:
        warnings.warn(FLIP_WARNING.format(method=method), MeaningfulPerturbationWarning, stacklevel=3)
        return cfg
    warnings.warn(FLIP_NOTE.format(method=method), MeaningfulPerturbationWarning, stacklevel=3)
    return dataclasses.replace(cfg, jitter="none")


def explain(
    model: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    target: Any = None,
    method: str = "paper",
    *,
    seed: int = 0,
    head: str = "auto",
    progress: bool = False,
    callback: Callable[[int, int], None] | None = None,
    **overrides: Any,
) -> Explanation:
    """Explain the model's prediction for a batch of images.

    Args:
        model: ``nn.Module`` or callable mapping ``(N, C, H, W)`` to ``(N, classes)`` scores
            (logits, probabilities, or one column for a binary sigmoid classifier; see
            ``head``). A Hugging Face ``ModelOutput`` or a dict with a ``"logits"`` entry is
            unwrapped; tuples, lists and other dicts are refused (wrap the model so it
            returns the class scores). It is run in eval mode with frozen parameters and
            restored afterwards.
        x: ``(N, C, H, W)`` float tensor, already normalised for the model, on any device.
        target: ``None`` (top-1 class of the clean image; top-5 for ``paper-loc``), an int,
            an ``(N,)`` integer tensor, a list of ``N`` class lists (the scores of the
            classes in a list are summed; images with different numbers of classes share
            the batch), or an ``(N, classes)`` multi-hot 0/1 label matrix (bool, int or
            float), read as the classes marked 1. A class may appear once per image.
        method: a name from :func:`meaningful_perturbation.methods`.
        seed: seed of every random draw (jitter, noise); same seed → identical masks. An int
            in ``[-2**63, 2**64)`` (what ``torch.Generator.manual_seed`` takes).
        head: how the model's output is read as class scores: ``"auto"`` (default: one
            column → ``"sigmoid"``, rows of non-negative values summing to 1 →
            ``"probabilities"``, otherwise ``"logits"``), ``"logits"`` (softmax),
            ``"probabilities"`` (the model ends in a softmax), ``"sigmoid"`` (multi-label or
            binary logits: a sigmoid per class) or ``"sigmoid-probabilities"`` (the sigmoid is
            already applied). The result's ``head`` says which was used. See
            :mod:`meaningful_perturbation.core.head`.
        progress: show a tqdm progress bar over the optimisation steps.
        callback: ``callback(step, total)`` after every step.
        **overrides: any field of the method's config (``steps``, ``lr``, ``game``, ...).

    Returns:
        :class:`Explanation` with float32 ``saliency`` ``(N, H, W)`` and ``masks``
        ``(N, K, H, W)`` on the CPU.

    Precision: pass ``x`` in the model's dtype (float16, bfloat16, float32 or float64, e.g.
    ``model.half(); explain(model, x.half())``). Masks, regularisers, perturbations and the
    optimiser state are computed in float32 (float64 for a float64 ``x``) and only the
    model's input is cast to ``x.dtype`` before each forward pass; scores are computed in
    at least float32 from the output, and the backward pass through a float16 model is
    rescaled per image by a power of two so that its gradients do not underflow
    (:mod:`~meaningful_perturbation.core.precision`). Float32 inputs are computed exactly
    as before.

    Raises:
        InputError: bad ``x`` (not a finite floating ``(N, C, H, W)`` tensor, or a dtype
            other than the four above), ``target`` or ``seed`` (an int in the 64-bit range
            [-2**63, 2**64)); or the model fails on ``x`` whose dtype differs from the model's
            parameters'.
        ConfigError: unknown ``method``, setting or ``head``, or a ``head`` the output's
            values contradict.
        ModelError: the model fails, returns something other than one row of class scores
            per image, NaN/inf, or has no gradient path to its input.

    Warns:
        HeadWarning: ``head="auto"`` read values that would also fit another head.

    Example:
        >>> import torch, meaningful_perturbation as mp
        >>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1),
        ...     torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
        >>> ex = mp.explain(model, torch.randn(2, 3, 32, 32), target=1, steps=5)
        >>> ex.saliency.shape, ex.masks.shape
        (torch.Size([2, 32, 32]), torch.Size([2, 1, 32, 32]))
    """
    spec = get_method(method)
    spec.check_requirements()  # a missing optional dependency (Captum): one clear error, not an ImportError
    cfg = resolve_config(spec, overrides)
    cfg = _mirror_jitter(spec, cfg, overrides, model, method)
    x = check_images(x).detach()
    work = working_dtype(x.dtype)
    check_seed(seed, "seed", InputError)  # a 64-bit generator seed, [-2**63, 2**64)
    check_head_option(head)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=getattr(cfg, "steps", None), desc=f"{method}", unit="step", leave=False)
    user_cb = callback

    def cb(step: int, total: int) -> None:
        if bar is not None:
            bar.update(1)
        if user_cb is not None:
            user_cb(step, total)

    def note(text: str) -> None:
        # a phase before the steps (the sweep's occlusion probe): named on the bar, and the
        # bar's clock restarted when it ends, so the steps' rate and ETA are the steps' own
        if bar is None:
            return
        if text:
            bar.set_description_str(f"{method}: {text}")
        else:
            bar.set_description_str(method)
            bar.reset(total=bar.total)

    try:
        with frozen(model):
            logits, model_head = clean_scores(model, x, head)
            rows = resolve_target(target, logits, getattr(cfg, "top_k", 1), model_head)
            _warn_top_k(overrides, target, rows, method)
            generator = torch.Generator(device="cpu")
            generator.manual_seed(seed)
            ctx = Context(
                model=model,
                x=x.to(work),
                targets=Targets(rows, device=x.device),
                clean_logits=logits,
                seed=seed,
                generator=generator,
                method=method,
                callback=cb if (bar is not None or user_cb is not None) else None,
                head=model_head,
                input_dtype=x.dtype,
                note=note if bar is not None else None,
            )
            try:
                return spec.run(ctx, cfg)
            except MeaningfulPerturbationError:
                raise
            except Exception as e:
                failed = _model_failure(e, method, x)
                if failed is None:
                    raise
                raise failed from e
    finally:
        if bar is not None:
            bar.close()


def _warn_top_k(overrides: dict[str, Any], target: Any, rows: list[list[int]], method: str) -> None:
    """A ``top_k`` the caller set that the model cannot give (more classes than it has; under a
    softmax, all of them: their probabilities sum to 1) is reduced by :func:`top_classes`;
    say so, naming the value used. The presets' own defaults are reduced silently (documented)."""
    import warnings

    asked = overrides.get("top_k")
    if target is not None or not isinstance(asked, int) or not rows or len(rows[0]) >= asked:
        return
    warnings.warn(
        f"{method}: top_k={asked} but the model gives at most {len(rows[0])} classes to explain together (a softmax "
        f"of every class sums to 1 whatever the input); explaining the top {len(rows[0])}",
        MeaningfulPerturbationWarning,
        stacklevel=3,
    )


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def _model_failure(e: Exception, method: str, x: torch.Tensor) -> ModelError | None:
    """The :class:`ModelError` for an exception raised while ``method`` ran after the clean
    pass, or None when it is not the model's (a defect of this package: re-raised as it is).

    The model's: a torch ``RuntimeError`` or ``MemoryError`` (out of memory on the batched
    steps, a device or dtype mismatch inside the model, a failing backward), or any exception
    whose innermost frame lies outside this package (raised by the model's own code).
    """
    import traceback

    frames = traceback.extract_tb(e.__traceback__)
    inner = os.path.abspath(frames[-1].filename) if frames else ""
    if not isinstance(e, (RuntimeError, MemoryError)) and inner.startswith(_PACKAGE_DIR + os.sep):
        return None
    text = " ".join(str(e).split())
    oom = "out of memory" in text.lower() or isinstance(e, MemoryError)
    hint = ("; the optimisation passes all images (and every area or mask of a batch) together: explain fewer "
            "images per call (mperturb: --batch-size), or lower the method's batch setting where it has one "
            "(rise: batch_size)") if oom else ""
    return ModelError(
        f"model: the {method!r} explanation of {x.shape[0]} image(s) of shape {tuple(x.shape[1:])} failed after the "
        f"clean pass with {type(e).__name__}: {text[:400]}{hint}"
    )

