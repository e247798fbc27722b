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
from typing import Any, Mapping, Sequence

import numpy as np
from ._atomic import atomic_path

__all__ = ["CMAP", "MIN_TILE_SIDE", "overlay", "saliency_range", "save_overlay", "save_panel", "atomic_path"]


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


#: Perceptually uniform colour map of every saliency figure (matplotlib's viridis: lightness
#: increases monotonically, readable in grey and by the common colour-vision deficiencies).
CMAP = "viridis"
#: Image tiles of the panel are upscaled (nearest neighbour) to at least this many pixels a
#: side, so a 32-64 px model input shows its perturbation instead of a smudge.
MIN_TILE_SIDE = 256


def _normalise(saliency: np.ndarray, value_range: tuple[float, float] | None = None) -> np.ndarray:
    """``saliency`` mapped to [0, 1] as float32: ``(s − lo) / (hi − lo)`` clipped.

    ``value_range=None``: min-max of the map; a map with ``hi <= lo`` is all 0. Never
    stretches a map over a fixed ``value_range``: a near-constant map stays near-constant.
    """
    s = np.array(saliency, dtype=np.float32)  # a copy, then in place: this map may be image-sized
    np.nan_to_num(s, copy=False, nan=0.0)
    if value_range is None:
        lo, hi = float(s.min()), float(s.max())
    else:
        lo, hi = float(value_range[0]), float(value_range[1])
    if not hi > lo:
        return np.zeros_like(s)
    s -= np.float32(lo)
    s /= np.float32(hi - lo)
    np.clip(s, 0.0, 1.0, out=s)
    return s


def overlay(
    rgb: Any,
    saliency: Any,
    *,
    alpha: float = 0.5,
    cmap: str = CMAP,
    value_range: tuple[float, float] | None = None,
) -> np.ndarray:
    """Alpha-blend a colour-mapped saliency map over an RGB image.

    Args:
        rgb: ``(H, W, 3)`` uint8 image.
        saliency: ``(H, W)`` map.
        alpha: weight of the colour map.
        cmap: matplotlib colour map name (default :data:`CMAP`, perceptually uniform).
        value_range: ``(lo, hi)`` mapped to the ends of the colour map (values outside are
            clipped); ``None`` = the map's own min-max (use :func:`saliency_range` for an
            explanation, which never stretches a degenerate map into a pattern).

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
    idx = _normalise(s, value_range)
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


def saliency_range(ex: Any, i: int = 0) -> tuple[float, float] | None:
    """The value range to draw saliency ``i`` of explanation ``ex`` with.

    Mask-learning presets (saliency in mask units: ``[0, 1]``, ``[0, K]`` for the sum of K
    extremal masks): ``(0, max(1, max))``, so the colour means the same in every figure and a
    flat map stays flat. A degenerate explanation (:func:`~meaningful_perturbation.explanation.degenerate_reason`):
    ``(min, min + 1)`` for a baseline, so it is drawn flat. Other baselines: ``None`` (min-max;
    their units are arbitrary).
    """
    from .explanation import degenerate_reason

    s = ex.saliency[i].detach().float()
    lo, hi = float(s.min()), float(s.max())
    if "perturbed" in ex.scores:
        return (0.0, max(1.0, hi))
    if degenerate_reason(ex, i) is not None:
        return (lo, lo + 1.0)
    return None


def save_overlay(
    path: str | os.PathLike,
    rgb: Any,
    saliency: Any,
    *,
    alpha: float = 0.5,
    value_range: tuple[float, float] | None = None,
) -> Path:
    """Write :func:`overlay` as an RGB PNG (atomically), at the image's own size and aspect."""
    from PIL import Image

    img = Image.fromarray(overlay(rgb, saliency, alpha=alpha, value_range=value_range), mode="RGB")
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")
    return Path(path)


def _upscale(img: np.ndarray | None, min_side: int) -> np.ndarray | None:
    """Nearest-neighbour upscale by an integer factor so the short side is >= ``min_side``."""
    if img is None:
        return None
    h, w = img.shape[:2]
    f = int(np.ceil(min_side / max(1, min(h, w))))
    if f <= 1:
        return img
    return np.repeat(np.repeat(img, f, axis=0), f, axis=1)


def _smooth(v: np.ndarray) -> np.ndarray:
    """Centred moving average over ~5% of the steps (at least 1, edges averaged over fewer)."""
    k = max(1, int(round(v.size / 20)))
    if k <= 1:
        return v
    c = np.cumsum(np.insert(v.astype(np.float64), 0, 0.0))
    lo = np.clip(np.arange(v.size) - k // 2, 0, v.size)
    hi = np.clip(np.arange(v.size) + k - k // 2, 0, v.size)
    return (c[hi] - c[lo]) / (hi - lo)


def _log_scale(v: np.ndarray) -> bool:
    """Log axis when a positive curve spans more than two decades."""
    v = v[np.isfinite(v)]
    return v.size > 1 and float(v.min()) > 0 and float(v.max()) / float(v.min()) > 100.0


def save_panel(
    path: str | os.PathLike,
    *,
    original: Any,
    saliency: Any,
    perturbed: Any = None,
    preserved: Any = None,
    history: Mapping[str, Any] | None = None,
    title: str = "",
    labels: tuple[str, str] = ("perturbed input", "preserved region"),
    columns: Sequence[tuple[str, Any]] | None = None,
    original_label: str = "original",
    value_range: tuple[float, float] | None = None,
    note: str | None = None,
    colorbar_label: str = "saliency",
    min_side: int = MIN_TILE_SIDE,
    history_title: str = "optimisation",
    curve: Mapping[str, Any] | None = None,
) -> Path:
    """Original | saliency (with colour bar) | image columns | loss and score over the steps
    (| the area–score curve, when ``curve`` is given).

    Args:
        original: ``(H, W, 3)`` image, uint8 or float in [0, 1].
        saliency: ``(H, W)`` map, drawn with :data:`CMAP` over ``value_range``.
        perturbed, preserved: ``(H, W, 3)`` images for the two default columns (titled
            ``labels``); ``perturbed`` may be ``None`` (only its label is shown).
        columns: ``(title, image or None)`` pairs replacing the two default columns (e.g. one
            per extremal area).
        history: name → 1-D sequence over steps: ``loss``, ``score_<game>`` (a probability)
            and regularisers. Drawn as two plots: the loss (log axis where it spans more than
            two decades) with each other term divided by its largest value, and the score on a
            fixed [0, 1] axis, raw (faint) and smoothed (moving average over ~5% of the steps).
        title: figure title; original_label: title of the first tile.
        value_range: ``(lo, hi)`` of the colour bar (``None``: the map's min-max).
        note: drawn over the saliency tile; a degenerate explanation passes its reason and a
            flat map (never stretched into a pattern).
        colorbar_label: the colour bar's label; history_title: the title of the curves.
        min_side: image tiles are upscaled (nearest neighbour) to at least this many pixels
            a side, so a small input's perturbation stays visible.
        curve: an area sweep's curve (``extremal-sweep``), drawn in a last column: ``areas``
            (K fractions), ``preserved`` (K probabilities of the preserved input) and optional
            ``deleted`` (K, the dual game's deleted input), ``clean``, ``perturbed``,
            ``sufficient_area`` (NaN: none), ``keep_fraction`` and ``label`` (the y axis,
            e.g. ``p(disc)``). Areas are drawn on a log axis in % of the image.

    Returns:
        ``path``.
    """
    _matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cols = list(columns) if columns is not None else [(labels[0], perturbed), (labels[1], preserved)]
    n_img = 2 + len(cols)
    extra = [1.5] if curve is not None else []
    fig = Figure(figsize=(3.3 * (n_img + 1.3 + sum(extra)), 4.0), dpi=100)
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(2, n_img + 1 + len(extra), width_ratios=[1.0] * n_img + [1.3] + extra, hspace=0.55,
                            wspace=0.25 if curve is None else 0.32)
    sal = np.nan_to_num(_as_numpy(saliency).astype(np.float32), nan=0.0)
    lo, hi = value_range if value_range is not None else (float(sal.min()), float(sal.max()))
    if not hi > lo:
        hi = lo + 1.0
    tiles = [(original_label, _as_numpy(original))] + [(t, None if im is None else _as_numpy(im)) for t, im in cols]
    for j, (name, img) in enumerate(tiles):
        ax = fig.add_subplot(grid[:, j if j == 0 else j + 1])
        if img is not None:
            ax.imshow(_upscale(img, min_side), interpolation="nearest")
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    ax = fig.add_subplot(grid[:, 1])
    im = ax.imshow(_upscale(sal, min_side), cmap=CMAP, vmin=lo, vmax=hi, interpolation="nearest")
    ax.set_title("saliency" if not note else "saliency (degenerate)", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    cbar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
    cbar.set_label(colorbar_label, fontsize=8)
    cbar.ax.tick_params(labelsize=7)
    if note:
        import textwrap

        ax.text(0.5, 0.5, textwrap.fill(note, 24), transform=ax.transAxes, ha="center", va="center",
                fontsize=8, color="black", bbox={"facecolor": "white", "alpha": 0.85, "edgecolor": "none"})
    _plot_history(fig, grid, n_img, history, history_title)
    if curve is not None:
        _plot_curve(fig.add_subplot(grid[:, n_img + 1]), curve)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.subplots_adjust(left=0.02, right=0.97, top=0.74 if "\n" in title else 0.8, bottom=0.13)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return Path(path)


def _plot_history(fig: Any, grid: Any, col: int, history: Mapping[str, Any] | None, title: str) -> None:
    curves = {k: _as_numpy(v).reshape(-1).astype(np.float64) for k, v in (history or {}).items()}
    curves = {k: v for k, v in curves.items() if v.size > 0}
    if not curves:
        ax = fig.add_subplot(grid[:, col])
        ax.text(0.5, 0.5, "no optimisation\n(no mask is optimised per image)", ha="center", va="center", fontsize=9)
        ax.axis("off")
        return
    top = fig.add_subplot(grid[0, col])
    bottom = fig.add_subplot(grid[1, col], sharex=top)
    loss = curves.pop("loss", None)
    scores = {k: v for k, v in curves.items() if k.startswith("score")}
    terms = {k: v for k, v in curves.items() if not k.startswith("score")}
    if loss is not None:
        top.plot(np.arange(1, loss.size + 1), loss, color="black", linewidth=1.2, label="loss")
        if _log_scale(loss):
            top.set_yscale("log")
        top.set_ylabel("loss", fontsize=8)
    if terms:
        tw = top.twinx()
        for k, v in terms.items():
            m = float(np.nanmax(np.abs(v))) or 1.0
            tw.plot(np.arange(1, v.size + 1), v / m, linewidth=0.8, linestyle="--", label=f"{k} / max")
        tw.set_ylim(-0.05, 1.05)
        tw.set_ylabel("term / its max", fontsize=7)
        tw.tick_params(labelsize=7)
        tw.legend(loc="upper right", fontsize=6, frameon=False)
    top.set_title(title, fontsize=9)
    top.tick_params(labelsize=7)
    if loss is not None:
        top.legend(loc="upper left", fontsize=6, frameon=False)
    for k, v in scores.items():
        steps = np.arange(1, v.size + 1)
        line = bottom.plot(steps, v, linewidth=0.6, alpha=0.3)[0]
        bottom.plot(steps, _smooth(v), linewidth=1.4, color=line.get_color(),
                    label=f"{k.removeprefix('score_')} game (smoothed)")
    probability = all(float(np.nanmin(v)) >= 0 and float(np.nanmax(v)) <= 1 for v in scores.values())
    if probability:  # a fixed axis: a flat curve reads as flat, not as a zig-zag
        bottom.set_ylim(0, 1)
    bottom.set_xlabel("step", fontsize=8)
    bottom.set_ylabel("p(target)" if probability else "score (logit)", fontsize=8)
    bottom.tick_params(labelsize=7)
    if scores:
        bottom.legend(loc="best", fontsize=6, frameon=False)


#: The area–score plot's y axis reaches this multiple of its data range; the band above the
#: data holds the legend (two columns of up to seven entries).
LEGEND_HEADROOM = 1.5


def curve_ticks(areas_percent: Any) -> list[float]:
    """X ticks (in % of the image) for an area–score curve: the first and last rung and the
    round values (0.5, 1, 2, 5, 10, 20, 50, 100) between them that are not within a factor 1.3
    of either end (their labels would overlap).

    Example:
        >>> curve_ticks([0.01, 0.02, 0.03])
        [0.01, 0.03]
        >>> curve_ticks([1.25, 5, 10, 56.57])
        [1.25, 2, 5, 10, 20, 56.57]
    """
    a = [float(v) for v in areas_percent]
    lo, hi = min(a), max(a)
    inner = [t for t in (0.5, 1, 2, 5, 10, 20, 50, 100) if lo * 1.3 <= t <= hi / 1.3]
    return sorted({lo, hi, *inner})


def _plot_curve(ax: Any, curve: Mapping[str, Any]) -> None:
    """The area–score curve of an area sweep on ``ax`` (see :func:`save_panel`'s ``curve``)."""
    areas = 100 * np.asarray([float(a) for a in curve["areas"]], dtype=np.float64)
    kept = _as_numpy(curve["preserved"]).reshape(-1).astype(np.float64)
    label = str(curve.get("label", "p(target)"))
    ax.plot(areas, kept, marker="o", markersize=3, linewidth=1.4, color="tab:blue", label="preserved (kept region only)")
    deleted = curve.get("deleted")
    if deleted is not None:
        ax.plot(areas, _as_numpy(deleted).reshape(-1), marker="s", markersize=3, linewidth=1.2, color="tab:red",
                label="deleted (kept region perturbed)")
    clean, whole = curve.get("clean"), curve.get("perturbed")
    if clean is not None:
        ax.axhline(float(clean), color="black", linewidth=0.8, linestyle="--", label=f"clean {float(clean):.3f}")
        frac = curve.get("keep_fraction")
        if frac is not None:
            ax.axhline(float(frac) * float(clean), color="grey", linewidth=0.8, linestyle=":",
                       label=f"{float(frac):.0%} of clean")
    if whole is not None:
        ax.axhline(float(whole), color="tab:orange", linewidth=0.8, linestyle="--", label=f"all perturbed {float(whole):.3f}")
    suff = curve.get("sufficient_area")
    if suff is not None and np.isfinite(float(suff)) and float(suff) < 1:  # 1.0: no rung suffices
        ax.axvline(100 * float(suff), color="tab:green", linewidth=1.0, label=f"sufficient area {100 * float(suff):.1f}%")
    ax.set_xscale("log")
    ax.set_xlim(areas.min() / 1.2, areas.max() * 1.2)
    from matplotlib.ticker import FixedLocator, NullLocator

    ticks = curve_ticks(areas)
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([f"{t:.3g}" for t in ticks])
    top = max(1.02, float(np.nanmax(kept)) + 0.02)  # probabilities; a summed sigmoid may pass 1
    # Headroom above the data holds the legend, so it never covers the curve.
    ax.set_ylim(-0.02, top * LEGEND_HEADROOM)
    ax.set_yticks([t for t in (0.0, 0.25, 0.5, 0.75, 1.0) if t <= top] + ([round(top, 2)] if top > 1.02 else []))
    ax.set_xlabel("kept area (% of image, log scale)", fontsize=8)
    ax.set_ylabel(label, fontsize=8)
    ax.set_title("area–score curve\n(nested masks of the sweep)", fontsize=9)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3, linewidth=0.5)
    ax.legend(loc="upper center", ncol=2, fontsize=6, frameon=True, framealpha=0.9, borderaxespad=0.3,
              columnspacing=0.8, handlelength=1.5)
