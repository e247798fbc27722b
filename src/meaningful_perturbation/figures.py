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
from ._terminal import format_p

__all__ = ["CMAP", "MIN_TILE_SIDE", "SCORE_AXIS_LABELS", "drawn_saliency", "format_p", "overlay", "saliency_range",
           "save_overlay", "save_panel", "panel_figure", "atomic_path"]


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


def drawn_saliency(ex: Any, i: int = 0, saliency: Any = None) -> tuple[np.ndarray, tuple[float, float] | None, str | None]:
    """What a figure draws for image ``i`` of explanation ``ex``: ``(map, value_range, note)``.

    A degenerate explanation (:func:`~meaningful_perturbation.explanation.degenerate_reason`
    is not ``None``) is drawn *flat*: ``map`` is all 0 (the bottom of the colour map: "nothing
    found"), ``value_range`` the map's units (``(0, max(1, max))`` for the mask-learning
    presets, ``(0, 1)`` for a baseline) and ``note`` the reason, to be shown with it; its
    leftover pattern is never drawn. Otherwise ``map`` is the saliency as given,
    ``value_range`` is :func:`saliency_range` and ``note`` is ``None``.

    Args:
        ex: an :class:`~meaningful_perturbation.Explanation`; i: image index.
        saliency: the ``(H', W')`` map to draw (e.g. image ``i``'s saliency mapped back to the
            photo's size); ``None``: ``ex.saliency[i]``.

    Returns:
        ``(map (H', W') float32, value_range or None, note or None)``.

    Raises:
        IndexError: ``i`` is not an image of ``ex``.
    """
    from .explanation import degenerate_reason

    reason = degenerate_reason(ex, i)
    s = np.nan_to_num(_as_numpy(ex.saliency[i] if saliency is None else saliency).astype(np.float32), nan=0.0)
    if reason is None:
        return s, saliency_range(ex, i), None
    value_range = saliency_range(ex, i) if "perturbed" in ex.scores else None
    return np.zeros_like(s), (0.0, value_range[1] if value_range is not None else 1.0), reason


#: Longest side, in pixels, of the text of a note stamped on an overlay, as a fraction of the
#: image's shorter side (the note stays readable on a photo and fits a small image).
NOTE_FONT_FRACTION = 1 / 22
#: Smallest font of an overlay's note, in pixels.
NOTE_MIN_FONT_PX = 9.0


def _stamp_note(img: np.ndarray, note: str) -> np.ndarray:
    """``img`` ``(H, W, 3)`` uint8 with ``note`` in a white band at its top, wrapped to its
    width; every pixel outside the band is unchanged."""
    _matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    h, w = img.shape[:2]
    dpi = 100.0
    fig = Figure(figsize=(w / dpi, h / dpi), dpi=dpi)
    canvas = FigureCanvasAgg(fig)
    fig.patch.set_alpha(0.0)
    font_pt = max(NOTE_MIN_FONT_PX, min(h, w) * NOTE_FONT_FRACTION) * 72.0 / dpi
    text = fig.text(0.5, 1.0 - 2.0 / h, note, ha="center", va="top", fontsize=font_pt, color="black",
                    parse_math=False, bbox={"facecolor": "white", "alpha": 0.85, "edgecolor": "none", "pad": 2.0})
    _wrap_artist(text, 0.94 * w, canvas.get_renderer())
    canvas.draw()
    band = np.asarray(canvas.buffer_rgba())[:h, :w].astype(np.float32)
    pad = ((0, h - band.shape[0]), (0, w - band.shape[1]), (0, 0))
    band = np.pad(band, pad)  # a figure rounded a pixel short: that pixel is left as it was
    a = band[..., 3:4] / 255.0
    out = img.astype(np.float32) * (1.0 - a) + band[..., :3] * a
    return (np.clip(out, 0.0, 255.0) + 0.5).astype(np.uint8)


def save_overlay(
    path: str | os.PathLike,
    rgb: Any,
    saliency: Any,
    *,
    alpha: float = 0.5,
    value_range: tuple[float, float] | None = None,
    note: str | None = None,
) -> Path:
    """Write :func:`overlay` as an RGB PNG (atomically), at the image's own size and aspect.

    Args:
        path: the PNG's path.
        rgb, saliency, alpha, value_range: as :func:`overlay` (``(H, W, 3)`` uint8 image,
            ``(H, W)`` map).
        note: text stamped in a white band at the top of the image (wrapped to its width), e.g.
            the reason a degenerate explanation is drawn flat (:func:`drawn_saliency`);
            ``None``: no band.

    Returns:
        ``path``.

    Raises:
        ValueError: ``rgb`` and ``saliency`` differ in height or width.
    """
    from PIL import Image

    arr = overlay(rgb, saliency, alpha=alpha, value_range=value_range)
    if note:
        arr = _stamp_note(arr, note)
    img = Image.fromarray(arr, mode="RGB")
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")
    return Path(path)


def _wrap_artist(text: Any, max_px: float, renderer: Any) -> None:
    """Re-wrap ``text`` (a matplotlib ``Text``) at spaces (and inside a word longer than a line)
    so each line is at most ``max_px`` pixels long (along the text: a rotated label is
    measured along its own direction)."""
    import textwrap

    props = text.get_fontproperties()

    def width(s: str) -> float:
        return renderer.get_text_width_height_descent(s, props, ismath=False)[0] if s else 0.0

    lines = []
    for line in text.get_text().split("\n"):
        if width(line) <= max_px:
            lines.append(line)
            continue
        n = len(line) - 1
        while n > 1:
            parts = textwrap.wrap(line, n, break_on_hyphens=False) or [line]
            if max(width(q) for q in parts) <= max_px:
                break
            n -= 1
        lines.extend(textwrap.wrap(line, max(1, n), break_on_hyphens=False) or [line])
    text.set_text("\n".join(lines))


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


#: What the optimisation plot's score axis says for each ``score`` setting of a preset (the
#: score its games optimised, recorded as ``history["score_<game>"]``); ``None``: not known.
SCORE_AXIS_LABELS = {
    "prob": "p(target)",
    "logit": "score (logit)",
    "contrastive": "score (logit − best other)",
    None: "score",
}
#: Panel layout, in inches: the height of the plots' row (image tiles, curves) and the margin
#: below it (x labels); the margin above holds the titles and grows with their lines.
PANEL_PLOTS_HEIGHT = 2.68
PANEL_BOTTOM_MARGIN = 0.52
#: Font sizes (points) of the panel's figure title and of each tile's title.
TITLE_FONT = 10.0
TILE_TITLE_FONT = 9.0
#: Relative width of the empty column between the optimisation plot and the area–score curve
#: (room for the first's right axis and the second's y label).
CURVE_GAP = 0.05


def save_panel(path: str | os.PathLike, **panel: Any) -> Path:
    """Write :func:`panel_figure` (``panel``: its keyword arguments) as a PNG to ``path``,
    atomically (no partial file on failure).

    Returns:
        ``path``.

    Raises:
        ConfigError: see :func:`panel_figure`.
    """
    fig = panel_figure(**panel)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return Path(path)


def panel_figure(
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
    score_kind: str | None = None,
) -> Any:
    """Original | saliency (with colour bar) | image columns | loss and score over the steps
    (| the area–score curve, when ``curve`` is given).

    Every title and label is wrapped to its column (long class names, several targets), the
    figure grows in height for the titles' lines, and no two texts overlap.

    Args:
        original: ``(H, W, 3)`` image, uint8 or float in [0, 1].
        saliency: ``(H, W)`` map, drawn with :data:`CMAP` over ``value_range``.
        perturbed, preserved: ``(H, W, 3)`` images for the two default columns (titled
            ``labels``); ``perturbed`` may be ``None`` (only its label is shown).
        columns: ``(title, image or None)`` pairs replacing the two default columns (e.g. one
            per extremal area).
        history: name → 1-D sequence over steps: ``loss``, ``score_<game>`` (the score the
            game optimised, of kind ``score_kind``) and regularisers. Drawn as two plots: the
            loss (log axis where it spans more than two decades) with each other term divided
            by its largest value, and the score, raw (faint) and smoothed (moving average over
            ~5% of the steps; runs under 30 steps are not smoothed: one line). Steps are
            integer ticks.
        title: figure title; original_label: title of the first tile.
        value_range: ``(lo, hi)`` of the colour bar (``None``: the map's min-max).
        note: drawn over the saliency tile, which is then titled "saliency (degenerate)" and
            drawn flat (every pixel at ``lo``; :func:`drawn_saliency` gives the map, range and
            note of a degenerate explanation): its leftover pattern is never shown.
        colorbar_label: the colour bar's label; history_title: the title of the curves.
        min_side: image tiles are upscaled (nearest neighbour) to at least this many pixels
            a side, so a small input's perturbation stays visible.
        curve: an area sweep's curve (``extremal-sweep``), drawn in a last column: ``areas``
            (K fractions), ``preserved`` (K probabilities of the preserved input) and optional
            ``deleted`` (K, the dual game's deleted input), ``clean``, ``perturbed``,
            ``sufficient_area`` (NaN: none), ``keep_fraction`` and ``label`` (the y axis,
            e.g. ``p(disc)``). Areas are drawn on a log axis in % of the image.
        score_kind: the ``score`` setting the method optimised (``"prob"``, ``"logit"``,
            ``"contrastive"``; ``None``: unknown): labels the score axis
            (:data:`SCORE_AXIS_LABELS`); ``"prob"`` is drawn on a fixed axis from 0 to
            ``max(1, largest value)``, the others on their own range. Never read from the
            values.

    Returns:
        A ``matplotlib.figure.Figure`` (:func:`save_panel` writes it).

    Raises:
        ConfigError: ``score_kind`` is not one of :data:`SCORE_AXIS_LABELS`.
    """
    if score_kind not in SCORE_AXIS_LABELS:
        from .errors import ConfigError

        raise ConfigError(f"score_kind: expected one of {[k for k in SCORE_AXIS_LABELS if k]} or None, "
                          f"got {score_kind!r}")
    _matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cols = list(columns) if columns is not None else [(labels[0], perturbed), (labels[1], preserved)]
    n_img = 2 + len(cols)
    extra = [CURVE_GAP, 1.5] if curve is not None else []
    width = 3.3 * (n_img + 1.3 + sum(extra))
    fig = Figure(figsize=(width, 4.0), dpi=100)
    canvas = FigureCanvasAgg(fig)
    fig.subplots_adjust(left=0.02, right=0.97, top=0.8, bottom=0.13)
    grid = fig.add_gridspec(2, n_img + 1 + len(extra), width_ratios=[1.0] * n_img + [1.3] + extra, hspace=0.55,
                            wspace=0.25)
    sal = np.nan_to_num(_as_numpy(saliency).astype(np.float32), nan=0.0)
    lo, hi = value_range if value_range is not None else (float(sal.min()), float(sal.max()))
    if not hi > lo:
        hi = lo + 1.0
    if note:  # degenerate: drawn flat, whatever pattern the map has left
        sal = np.full_like(sal, lo)
    tiles = [(original_label, _as_numpy(original))] + [(t, None if im is None else _as_numpy(im)) for t, im in cols]
    titled = []  # (axes, its title Text): wrapped to their columns below
    for j, (name, img) in enumerate(tiles):
        ax = fig.add_subplot(grid[:, j if j == 0 else j + 1])
        if img is not None:
            ax.imshow(_upscale(img, min_side), interpolation="nearest")
        titled.append((ax, ax.set_title(name, fontsize=TILE_TITLE_FONT, parse_math=False)))
        ax.axis("off")
    sal_ax = fig.add_subplot(grid[:, 1])
    im = sal_ax.imshow(_upscale(sal, min_side), cmap=CMAP, vmin=lo, vmax=hi, interpolation="nearest")
    titled.append((sal_ax, sal_ax.set_title("saliency" if not note else "saliency (degenerate)",
                                            fontsize=TILE_TITLE_FONT)))
    sal_ax.set_xticks([])
    sal_ax.set_yticks([])
    cbar = fig.colorbar(im, ax=sal_ax, fraction=0.046, pad=0.03)
    cbar.set_label(colorbar_label, fontsize=8, parse_math=False)
    cbar.ax.tick_params(labelsize=7)
    note_text = None
    if note:
        note_text = sal_ax.text(0.5, 0.5, note, transform=sal_ax.transAxes, ha="center", va="center", fontsize=8,
                                color="black", parse_math=False,
                                bbox={"facecolor": "white", "alpha": 0.85, "edgecolor": "none"})
    titled += _plot_history(fig, grid, n_img, history, history_title, score_kind)
    curve_ax = None
    if curve is not None:
        curve_ax = fig.add_subplot(grid[:, n_img + 2])
        _plot_curve(curve_ax, curve)
        titled.append((curve_ax, curve_ax.title))
    sup = fig.suptitle(title, fontsize=TITLE_FONT, va="top", parse_math=False) if title else None

    # Wrap every title to its column, then size the figure's top margin to the lines.
    renderer = canvas.get_renderer()
    fig_px = fig.get_figwidth() * fig.dpi
    gap = grid.get_grid_positions(fig)[2][1] - grid.get_grid_positions(fig)[3][0]  # between two columns
    for ax, text in titled:
        cell = ax.get_subplotspec().get_position(fig)
        box = ax.get_position()
        cx = box.x0 + box.width / 2
        left, right = max(0.005, cell.x0 - 0.45 * gap), min(0.995, cell.x1 + 0.45 * gap)
        _wrap_artist(text, 2 * min(cx - left, right - cx) * fig_px, renderer)
    if sup is not None:
        _wrap_artist(sup, 0.96 * fig_px, renderer)
    lines = max(t.get_text().count("\n") + 1 for _, t in titled)
    sup_lines = sup.get_text().count("\n") + 1 if sup is not None else 0
    top = (sup_lines * TITLE_FONT * 1.25 + lines * TILE_TITLE_FONT * 1.25 + 6.0) / 72.0 + 0.22
    height = PANEL_BOTTOM_MARGIN + PANEL_PLOTS_HEIGHT + top
    fig.set_size_inches(width, height)
    fig.subplots_adjust(top=1.0 - top / height, bottom=PANEL_BOTTOM_MARGIN / height)
    if sup is not None:
        sup.set_y(1.0 - 0.08 / height)
    # Vertical labels: wrapped to their axes' height.
    plot_px = PANEL_PLOTS_HEIGHT * fig.dpi
    _wrap_artist(cbar.ax.yaxis.label, 0.95 * plot_px, renderer)
    if curve_ax is not None:
        _wrap_artist(curve_ax.yaxis.label, 0.95 * plot_px, renderer)
    if note_text is not None:
        sal_ax.apply_aspect()
        box = sal_ax.get_position()
        _wrap_artist(note_text, 0.9 * min(box.width * fig_px, box.height * height * fig.dpi), renderer)
    return fig


def _smooth_window(n: int) -> int:
    """The moving average's window for ``n`` steps: ~5% of them (1: not smoothed)."""
    return max(1, int(round(n / 20)))


def _plot_history(fig: Any, grid: Any, col: int, history: Mapping[str, Any] | None, title: str,
                  score_kind: str | None = None) -> list[tuple[Any, Any]]:
    """The loss and score plots in column ``col``; returns ``[(axes, title Text)]``."""
    from matplotlib.ticker import MaxNLocator

    curves = {k: _as_numpy(v).reshape(-1).astype(np.float64) for k, v in (history or {}).items()}
    curves = {k: v for k, v in curves.items() if v.size > 0}
    if not curves:
        ax = fig.add_subplot(grid[:, col])
        ax.text(0.5, 0.5, "no optimisation\n(no mask is optimised per image)", ha="center", va="center", fontsize=9)
        ax.axis("off")
        return []
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
    heading = top.set_title(title, fontsize=TILE_TITLE_FONT, parse_math=False)
    top.tick_params(labelsize=7)
    if loss is not None:
        top.legend(loc="upper center", fontsize=6, frameon=False)  # a falling loss starts top left
    largest = 0.0
    for k, v in scores.items():
        steps = np.arange(1, v.size + 1)
        game = f"{k.removeprefix('score_')} game"
        window = _smooth_window(v.size)
        if window > 1:  # raw (faint) and its moving average
            line = bottom.plot(steps, v, linewidth=0.6, alpha=0.35, label=f"{game} (raw)")[0]
            bottom.plot(steps, _smooth(v), linewidth=1.4, color=line.get_color(),
                        label=f"{game} (mean over {window} steps)")
        else:  # too few steps to smooth: one line, the raw values
            bottom.plot(steps, v, linewidth=1.4, label=game)
        if np.isfinite(v).any():
            largest = max(largest, float(np.nanmax(v)))
    if score_kind == "prob":  # a fixed axis: a flat curve reads as flat, not as a zig-zag
        bottom.set_ylim(0, max(1.0, largest * 1.02))  # a summed sigmoid set may pass 1
    top.xaxis.set_major_locator(MaxNLocator(integer=True))
    bottom.xaxis.set_major_locator(MaxNLocator(integer=True))
    bottom.set_xlabel("step", fontsize=8)
    bottom.set_ylabel(SCORE_AXIS_LABELS[score_kind], fontsize=8)
    bottom.tick_params(labelsize=7)
    for ax in (top, bottom):  # no "1e-5+2.3" offset text between the two plots
        if ax.get_yscale() == "linear":
            ax.ticklabel_format(axis="y", useOffset=False)
    if scores:
        bottom.legend(loc="best", fontsize=6, frameon=False)
    return [(top, heading)]


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
        ax.axhline(float(clean), color="black", linewidth=0.8, linestyle="--", label=f"clean {format_p(clean)}")
        frac = curve.get("keep_fraction")
        if frac is not None:
            ax.axhline(float(frac) * float(clean), color="grey", linewidth=0.8, linestyle=":",
                       label=f"{float(frac):.0%} of clean")
    if whole is not None:
        ax.axhline(float(whole), color="tab:orange", linewidth=0.8, linestyle="--", label=f"all perturbed {format_p(whole)}")
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
    ax.set_ylabel(label, fontsize=8, parse_math=False)
    ax.set_title("area–score curve\n(nested masks of the sweep)", fontsize=TILE_TITLE_FONT)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3, linewidth=0.5)
    ax.legend(loc="upper center", ncol=2, fontsize=6, frameon=True, framealpha=0.9, borderaxespad=0.3,
              columnspacing=0.8, handlelength=1.5)
