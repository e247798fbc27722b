"""Figures for explanations: saliency overlays and the five-column panel.

matplotlib is imported lazily (only when a figure is drawn) and used without pyplot, through
the Agg canvas, so nothing here needs a display. Files are written atomically (temporary
name in the same folder, then ``os.replace``).

Example:
    >>> import numpy as np
    >>> rgb = np.zeros((20, 30, 3), np.uint8)
    >>> overlay(rgb, np.random.rand(20, 30)).shape
    (20, 30, 3)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from ._atomic import atomic_path

__all__ = ["overlay", "save_overlay", "save_panel", "atomic_path"]


def _matplotlib():
    import matplotlib

    if not os.environ.get("MPLBACKEND"):
        try:
            matplotlib.use("Agg", force=False)
        except Exception:  # pragma: no cover - backend already fixed by the host program
            pass
    return matplotlib


def _as_numpy(a: Any) -> np.ndarray:
    if hasattr(a, "detach"):
        a = a.detach().cpu().float().numpy()
    return np.asarray(a)


def _normalise(saliency: np.ndarray) -> np.ndarray:
    s = np.nan_to_num(saliency.astype(np.float64), nan=0.0)
    lo, hi = float(s.min()), float(s.max())
    if not hi > lo:
        return np.zeros_like(s)
    s -= lo  # in place: this map may be image-sized
    s /= hi - lo
    return s


def overlay(rgb: Any, saliency: Any, *, alpha: float = 0.5, cmap: str = "jet") -> np.ndarray:
    """Alpha-blend a colour-mapped saliency map over an RGB image.

    Args:
        rgb: ``(H, W, 3)`` uint8 image.
        saliency: ``(H, W)`` map (any range; min-max normalised for the colour map).
        alpha: weight of the colour map.
        cmap: matplotlib colour map name.

    Returns:
        ``(H, W, 3)`` uint8 array.
    """
    rgb = _as_numpy(rgb)
    s = _as_numpy(saliency)
    if rgb.shape[:2] != s.shape:
        raise ValueError(f"overlay: image is {rgb.shape[:2]} but saliency is {s.shape}")
    mpl = _matplotlib()
    # float32 and in place (~35 bytes per pixel at the peak instead of ~115 with float64 and
    # matplotlib's RGBA output): the colour map is looked up the way Colormap.__call__ does
    # (index = floor(v * N), 1.0 -> N - 1) in a float32 copy of its table.
    cm = mpl.colormaps[cmap]
    lut = (cm(np.arange(cm.N))[:, :3] * 255.0).astype(np.float32)  # (N, 3), 0-255
    idx = _normalise(s).astype(np.float32)
    idx *= cm.N
    np.clip(idx, 0, cm.N - 1, out=idx)
    colours = lut[idx.astype(np.uint16)]  # (H, W, 3) float32
    del idx
    colours *= np.float32(alpha)
    scale = 1.0 - alpha if rgb.dtype == np.uint8 else 255.0 * (1.0 - alpha)
    colours += np.multiply(rgb, np.float32(scale), dtype=np.float32)
    np.clip(colours, 0.0, 255.0, out=colours)
    colours += 0.5
    return colours.astype(np.uint8)


def save_overlay(path: str | os.PathLike, rgb: Any, saliency: Any, *, alpha: float = 0.5) -> Path:
    """Write :func:`overlay` as an RGB PNG (atomically)."""
    from PIL import Image

    img = Image.fromarray(overlay(rgb, saliency, alpha=alpha), mode="RGB")
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")
    return Path(path)


def save_panel(
    path: str | os.PathLike,
    *,
    original: Any,
    saliency: Any,
    perturbed: Any,
    preserved: Any,
    history: Mapping[str, Any] | None = None,
    title: str = "",
    labels: tuple[str, str] = ("perturbed input", "preserved region"),
) -> Path:
    """Original | saliency | perturbed input | preserved region | curves over the steps.

    Args:
        original, perturbed, preserved: ``(H, W, 3)`` images, uint8 or float in [0, 1];
            ``perturbed`` may be ``None`` (a method with no perturbed input): the tile then
            shows only its label.
        saliency: ``(H, W)`` map.
        history: name → 1-D sequence over steps (e.g. ``loss``, ``score_delete``).
        title: figure title.
        labels: titles of the third and fourth tiles (say which game and perturbation they
            show; ``mperturb explain`` sets them from the explanation).
    """
    _matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(16, 3.4), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 5)
    panels = [
        ("original", _as_numpy(original), None),
        ("saliency", _as_numpy(saliency), "jet"),
        (labels[0], None if perturbed is None else _as_numpy(perturbed), None),
        (labels[1], _as_numpy(preserved), None),
    ]
    for ax, (name, img, cmap) in zip(axes[:4], panels):
        if img is not None:
            ax.imshow(img, cmap=cmap)
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    ax = axes[4]
    curves = {k: _as_numpy(v).reshape(-1) for k, v in (history or {}).items()}
    curves = {k: v for k, v in curves.items() if v.size > 0}
    if curves:
        loss = curves.pop("loss", None)
        if loss is not None:
            ax.plot(np.arange(1, loss.size + 1), loss, color="black", label="loss")
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        scores = {k: v for k, v in curves.items() if k.startswith("score")}
        others = {k: v for k, v in curves.items() if not k.startswith("score")}
        if scores:
            ax2 = ax.twinx()
            for k, v in scores.items():
                ax2.plot(np.arange(1, v.size + 1), v, linestyle="--", label=k)
            ax2.set_ylabel("score")
            ax2.legend(loc="upper right", fontsize=7)
        for k, v in others.items():
            ax.plot(np.arange(1, v.size + 1), v, linewidth=0.8, label=k)
        ax.legend(loc="upper left", fontsize=7)
        ax.set_title("optimisation", fontsize=10)
    else:
        ax.text(0.5, 0.5, "no optimisation history", ha="center", va="center")
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return Path(path)
