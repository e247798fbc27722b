"""Benchmark every explanation method on held-out images of a ground-truth family.

The family (``family=``, CLI ``--family``) is ShapeEvidence (``"shapes"``, the default: a
flat-coloured class shape) or TextureEvidence (``"textures"``: an oriented grating in a
random blob; :mod:`meaningful_perturbation.data.textures`), each explained on its own demo
model. For ``n`` images of the ``"test"`` split, normalised for the demo model, each method
explains the *true* label, in batches. Per image we score

* **exact pointing** — the saliency maximum lies on the class shape (tolerance 0);
* **pointing@tol** — within :func:`~meaningful_perturbation.metrics.scaled_tolerance`
  of the shape (15 px at 224 px, scaled to ``size``);
* **rank accuracy** — share of the top-``|G|`` pixels inside the shape;
* **distractor mass** — share of the saliency mass on label-free distractors (only images
  that have distractors; lower is better);
* **deletion AUC** (lower is better) and **insertion AUC** (higher is better);
* **minimal sufficient area** — smallest top-ranked fraction keeping 90 % of the clean
  probability (lower is better);

each reported as the mean with a percentile-bootstrap 95 % CI. Cost columns: wall-clock
seconds of :func:`~meaningful_perturbation.explain` per image, and model passes per image
(images the model evaluated inside ``explain`` — clean pass included — divided by ``n``).

Example:
    >>> from meaningful_perturbation.evaluation import run_benchmark
    >>> res = run_benchmark(n=16, methods=["gradient", "random"], progress=False)  # doctest: +SKIP
    >>> print(res.to_markdown())  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from ..errors import MeaningfulPerturbationError, ConfigError

__all__ = [
    "BenchmarkResult",
    "COLUMNS",
    "DEFAULT_METHODS",
    "FAST_METHODS",
    "LEGEND",
    "METRICS",
    "BenchmarkSettings",
    "check_benchmark_settings",
    "estimate_seconds",
    "parse_variant",
    "run_benchmark",
]

#: Methods benchmarked by default. ``paper-loc`` is the 2017 localisation setting
#: (λ1 = 1e-3, β = 2); its top-5 default target does not apply, since the benchmark explains
#: the true label. ``extremal-fast`` is ``extremal`` on a quarter of
#: the schedule: name them to run them.
DEFAULT_METHODS: tuple[str, ...] = (
    "paper",
    "paper-loc",
    "extremal",
    "seed",
    "rise",
    "occlusion",
    "gradient",
    "gradcam",
    "random",
    "center",
)

#: The ``mperturb benchmark`` default: every method that takes seconds, not minutes, per image
#: on a CPU (``extremal-fast`` for ``extremal``; ``paper-loc`` and ``seed`` are the 2017 paper's
#: other settings and cost as much as ``paper``); ``--full`` runs :data:`DEFAULT_METHODS`.
FAST_METHODS: tuple[str, ...] = (
    "paper",
    "extremal-fast",
    "rise",
    "occlusion",
    "gradient",
    "gradcam",
    "random",
    "center",
)

#: Per-image quality metrics (key, column header), reported as ``(mean, lo, hi)``.
METRICS: tuple[tuple[str, str], ...] = (
    ("exact_pointing", "exact pointing"),
    ("pointing_tol", "pointing@tol"),
    ("rank_accuracy", "rank acc"),
    ("distractor_mass", "distractor mass"),
    ("deletion_auc", "deletion AUC ↓"),
    ("insertion_auc", "insertion AUC ↑"),
    ("min_sufficient_area", "min. sufficient area ↓"),
)

#: Cost columns (key, header), plain floats.
COSTS: tuple[tuple[str, str], ...] = (("seconds_per_image", "s/img"), ("passes_per_image", "passes/img"))

#: Every column of :meth:`BenchmarkResult.to_markdown`, in order.
COLUMNS: tuple[str, ...] = ("method",) + tuple(h for _, h in METRICS) + tuple(h for _, h in COSTS)


class _CountingModel(torch.nn.Module):
    """Wraps a model and counts the images passed through ``forward``."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        self.images = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.images += int(x.shape[0])
        return self.model(x)


class _ResizedInput(torch.nn.Module):
    """Feeds ``model`` its training resolution: inputs of any other size are resized to
    ``size`` × ``size`` (bilinear, antialiased, differentiable) first, as an ImageNet
    pipeline resizes before its network. The explained model is this composite."""

    def __init__(self, model: torch.nn.Module, size: int) -> None:
        super().__init__()
        self.model = model
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != (self.size, self.size):
            x = torch.nn.functional.interpolate(
                x, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True
            )
        return self.model(x)


#: Below this share of correctly classified images the benchmark warns: explanations of a
#: model that is mostly wrong on the draw say little about the methods.
MIN_ACCURACY = 0.9


def _fmt_ci(v: Sequence[float]) -> str:
    mean, lo, hi = v
    if math.isnan(mean):
        return "n/a"
    return f"{mean:.2f} [{lo:.2f}, {hi:.2f}]"


#: What each column of :meth:`BenchmarkResult.to_markdown` means (printed under the table).
LEGEND: tuple[tuple[str, str], ...] = (
    ("exact pointing", "share of images whose saliency maximum lies on the target object (higher is better)"),
    ("pointing@tol", "the same, within 15 px at 224 px (scaled with the image size) of the object"),
    ("rank acc", "share of the K most salient pixels that lie on the object, K = the object's pixel count "
                 "(higher is better)"),
    ("distractor mass", "share of the saliency on distractor objects, images with distractors only "
                        "(lower is better)"),
    ("deletion AUC ↓", "area under p(true class) as the most salient pixels are blurred away first "
                       "(lower is better)"),
    ("insertion AUC ↑", "area under p(true class) as the most salient pixels are restored first on a blurred "
                        "image (higher is better)"),
    ("min. sufficient area ↓", "smallest share of the pixels, most salient first, that alone keeps 90% of the "
                               "clean p(true class) (lower is better)"),
    ("s/img", "wall-clock seconds per image to explain (this machine, this load)"),
    ("passes/img", "images passed through the model per explained image (the exact cost)"),
)


def legend_markdown() -> str:
    """:data:`LEGEND` as Markdown lines, with the cell format."""
    lines = ["Quality cells: mean [95% bootstrap CI] over the images, two decimals."]
    lines += [f"- **{h}**: {what}" for h, what in LEGEND]
    return "\n".join(lines) + "\n"


def _fmt_cost(v: float, key: str) -> str:
    if math.isnan(v):
        return "n/a"
    if key == "passes_per_image":
        return f"{v:.0f}"
    return f"{v:.3f}"


def _jsonable(v: Any) -> Any:
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, (list, tuple)):
        return [_jsonable(u) for u in v]
    if isinstance(v, dict):
        return {k: _jsonable(u) for k, u in v.items()}
    return v


@dataclass
class BenchmarkResult:
    """Outcome of :func:`run_benchmark`.

    Attributes:
        rows: one dict per method: ``"method"`` → name, every key of :data:`METRICS` →
            ``(mean, lo, hi)`` (NaN when no image qualifies), ``"seconds_per_image"`` and
            ``"passes_per_image"`` → float, ``"n_distractor_images"`` → int.
        settings: the arguments of the run (and the tolerance used); ``"family"`` names the
            ground-truth family (absent in files written before it existed: ``"shapes"``).
        per_image: ``{method: {metric: [value per image]}}`` (NaN where not applicable).
        images: what each image is, for :meth:`breakdown`: ``"label"`` (int), ``"class"``
            (name), ``"object_area"`` (share of the image covered by the class shape) and
            ``"background"``, each a list in image order.
    """

    rows: list[dict[str, Any]]
    settings: dict[str, Any]
    per_image: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    images: dict[str, list[Any]] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "BenchmarkResult":
        """Rebuild a result from :meth:`to_json` output (e.g. a saved ``benchmark.json``).

        ``None`` becomes NaN again. Files written before ``images`` was recorded get it
        regenerated from their settings: the draw is deterministic in ``(family, n, size,
        split, seed)``.

        Raises:
            ConfigError: ``data`` is not a benchmark JSON.
        """
        if not isinstance(data, dict) or not {"settings", "rows", "per_image"} <= set(data):
            got = sorted(data) if isinstance(data, dict) else type(data).__name__
            raise ConfigError(f"data: expected a benchmark JSON with settings, rows and per_image, got {got}")

        def num(v: Any) -> float:
            return math.nan if v is None else float(v)

        try:
            rows = []
            for r in data["rows"]:
                row: dict[str, Any] = {"method": r["method"]}
                for k, _ in METRICS:
                    row[k] = (num(r[k]["mean"]), num(r[k]["lo"]), num(r[k]["hi"]))
                for k, _ in COSTS:
                    row[k] = num(r[k])
                row["n_distractor_images"] = r.get("n_distractor_images", 0)
                rows.append(row)
            per_image = {m: {k: [num(u) for u in v] for k, v in d.items()} for m, d in data["per_image"].items()}
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ConfigError(f"data: malformed benchmark JSON ({type(e).__name__}: {e})") from None
        settings = dict(data["settings"])
        images = data.get("images") or _describe_images(settings)
        return cls(rows=rows, settings=settings, per_image=per_image, images=images)

    @classmethod
    def combine(cls, results: Sequence["BenchmarkResult"]) -> "BenchmarkResult":
        """One result holding the rows of several runs on the same images.

        The runs must share ``family``, ``n``, ``size``, ``seed`` and ``split`` (the same
        draw), and no method may appear twice. Settings are the first run's, with ``methods`` and
        ``overrides`` merged.

        Raises:
            ConfigError: no results, different draws, or a repeated method.
        """
        results = list(results)
        if not results:
            raise ConfigError("results: expected at least one BenchmarkResult")
        draw_keys = ("n", "size", "seed", "split")
        first = results[0]
        draw = {"family": _family_of(first.settings), **{k: first.settings.get(k) for k in draw_keys}}
        rows: list[dict[str, Any]] = []
        per_image: dict[str, dict[str, list[float]]] = {}
        methods: list[str] = []
        overrides: dict[str, Any] = {}
        for i, r in enumerate(results):
            other = {"family": _family_of(r.settings), **{k: r.settings.get(k) for k in draw_keys}}
            if other != draw:
                raise ConfigError(f"results[{i}]: drawn with {other}, expected the same images as results[0] ({draw})")
            for row in r.rows:
                if row["method"] in per_image:
                    raise ConfigError(f"results[{i}]: method {row['method']!r} is already in an earlier result")
                rows.append(row)
                per_image[row["method"]] = r.per_image.get(row["method"], {})
                methods.append(row["method"])
            overrides.update(r.settings.get("overrides", {}))
        settings = {**first.settings, "methods": methods, "overrides": overrides}
        images = next((r.images for r in results if r.images), {})
        return cls(rows=rows, settings=settings, per_image=per_image, images=images)

    def select(self, methods: Sequence[str]) -> "BenchmarkResult":
        """The rows of ``methods`` only (those present; order of the result kept)."""
        wanted = set(methods)
        rows = [r for r in self.rows if r["method"] in wanted]
        names = [r["method"] for r in rows]
        settings = {
            **self.settings,
            "methods": names,
            "overrides": {k: v for k, v in self.settings.get("overrides", {}).items() if k in wanted},
        }
        per_image = {k: v for k, v in self.per_image.items() if k in wanted}
        return BenchmarkResult(rows=rows, settings=settings, per_image=per_image, images=self.images)

    def breakdown(self, metric: str = "rank_accuracy", by: str = "class", bins: int = 3) -> dict[str, dict[str, tuple[float, int]]]:
        """Mean of a per-image metric within groups of images, per method.

        Args:
            metric: a key of :data:`METRICS`.
            by: ``"class"`` (the class shape's type) or ``"size"`` (``bins`` quantile groups
                of the class shape's area, smallest first).
            bins: number of size groups.

        Returns:
            ``{method: {group: (mean, n_images)}}``, groups in order; NaN values
            (images where the metric does not apply) are left out of both.

        Raises:
            ConfigError: an unknown ``metric`` or ``by``, or no image descriptions.
        """
        keys = [k for k, _ in METRICS]
        if metric not in keys:
            raise ConfigError(f"metric: expected one of {keys}, got {metric!r}")
        if by not in ("class", "size"):
            raise ConfigError(f"by: expected 'class' or 'size', got {by!r}")
        _check_int(bins, "bins", 1)
        if not self.images:
            raise ConfigError("breakdown: this result has no image descriptions (images is empty)")
        groups = _groups(self.images, by, bins)
        out: dict[str, dict[str, tuple[float, int]]] = {}
        for method, values in self.per_image.items():
            v = torch.tensor(values[metric], dtype=torch.float64)
            cells: dict[str, tuple[float, int]] = {}
            for name, idx in groups.items():
                sel = v[idx]
                sel = sel[~torch.isnan(sel)]
                cells[name] = (float(sel.mean()) if len(sel) else math.nan, int(len(sel)))
            out[method] = cells
        return out

    def breakdown_markdown(self, metric: str = "rank_accuracy", by: str = "class", bins: int = 3) -> str:
        """:meth:`breakdown` as a Markdown table: one row per method, one column per group
        (headed with its number of images)."""
        table = self.breakdown(metric, by, bins)
        names = list(next(iter(table.values()))) if table else []
        counts = {g: max((cells[g][1] for cells in table.values()), default=0) for g in names}
        head = [metric] + [f"{g} (n={counts[g]})" for g in names]
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
        for method, cells in table.items():
            vals = ["n/a" if math.isnan(cells[g][0]) else f"{cells[g][0]:.2f}" for g in names]
            lines.append("| " + " | ".join([method] + vals) + " |")
        return "\n".join(lines) + "\n"

    def heading(self) -> str:
        """One Markdown heading line naming the data set, e.g. ``"## TextureEvidence
        (--family textures): 200 held-out test images, 64 px, model demo:textures"``."""
        from ..data import get_family

        st = self.settings
        family = _family_of(st)
        title = get_family(family).title if family in _families() else family
        return (
            f"## {title} (--family {family}): {st.get('n', '?')} held-out {st.get('split', 'test')} images, "
            f"{st.get('size', '?')} px, model {st.get('model', '?')}\n"
        )

    def to_markdown(self) -> str:
        """A Markdown table, one row per method, each metric as ``mean [lo, hi]``
        (:meth:`heading` names the family above it)."""
        lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
        for row in self.rows:
            cells = [row["method"]]
            cells += [_fmt_ci(row[k]) for k, _ in METRICS]
            cells += [_fmt_cost(row[k], k) for k, _ in COSTS]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable dict (non-finite numbers become ``None``)."""
        rows = []
        for row in self.rows:
            out: dict[str, Any] = {"method": row["method"]}
            for k, _ in METRICS:
                mean, lo, hi = row[k]
                out[k] = {"mean": mean, "lo": lo, "hi": hi}
            for k, _ in COSTS:
                out[k] = row[k]
            out["n_distractor_images"] = row["n_distractor_images"]
            rows.append(out)
        return _jsonable(
            {
                "settings": dict(self.settings),
                "columns": list(COLUMNS),
                "rows": rows,
                "per_image": self.per_image,
                "images": self.images,
            }
        )


def _family_of(settings: dict[str, Any]) -> str:
    """The family a run was drawn from; runs saved before families existed are ShapeEvidence."""
    return str(settings.get("family", "shapes"))


def _families() -> tuple[str, ...]:
    from ..data import FAMILIES

    return tuple(FAMILIES)


def _describe_images(settings: dict[str, Any]) -> dict[str, list[Any]]:
    """Image descriptions of a benchmark run, regenerated from its settings."""
    from ..data import get_family

    try:
        n, size, seed = int(settings["n"]), int(settings["size"]), int(settings["seed"])
    except (KeyError, TypeError, ValueError) as e:
        raise ConfigError(f"settings: need n, size and seed to regenerate the images ({e})") from None
    make = get_family(_family_of(settings), "settings.family").make
    return _image_info(make(n, size=size, split=settings.get("split", "test"), seed=seed))


def _image_info(data: Any) -> dict[str, list[Any]]:
    area = data.masks.reshape(len(data), -1).mean(axis=1)
    return {
        "label": [int(v) for v in data.labels],
        "class": [data.classes[int(v)] for v in data.labels],
        "object_area": [float(v) for v in area],
        "background": list(data.backgrounds),
    }


def _groups(images: dict[str, list[Any]], by: str, bins: int) -> dict[str, torch.Tensor]:
    """Image indices per group: class names in label order, or area quantile bins."""
    if by == "class":
        order = sorted(set(zip(images["label"], images["class"])))
        labels = torch.tensor(images["label"])
        return {name: torch.nonzero(labels == lab).flatten() for lab, name in order}
    area = torch.tensor(images["object_area"], dtype=torch.float64)
    edges = torch.quantile(area, torch.linspace(0, 1, bins + 1, dtype=torch.float64))
    which = torch.bucketize(area, edges[1:-1], right=True)  # bin b holds edges[b] <= a < edges[b+1]
    return {
        f"area {100 * edges[b]:.1f}-{100 * edges[b + 1]:.1f}%": torch.nonzero(which == b).flatten() for b in range(bins)
    }


def _check_int(v: Any, name: str, minimum: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise ConfigError(f"{name}: expected an int >= {minimum}, got {v!r}")
    return v


def parse_variant(spec: str) -> tuple[str, dict[str, Any]]:
    """A benchmark method entry: ``"NAME"`` or ``"NAME:KEY=VALUE[:KEY=VALUE...]"``.

    Values are read as JSON when they parse (numbers, booleans, ``null``, lists → tuples),
    as plain strings otherwise. The same method may appear several times with different
    settings; each entry is one row, labelled by its spec.

    Example:
        >>> parse_variant("paper")
        ('paper', {})
        >>> parse_variant("extremal:areas=[0.1, 0.2]:steps=200")
        ('extremal', {'areas': (0.1, 0.2), 'steps': 200})

    Raises:
        ConfigError: an empty name, or a setting without ``=``.
    """
    if not isinstance(spec, str):
        raise ConfigError(f"methods: expected method names (str), got {spec!r}")
    name, *items = spec.split(":")
    name = name.strip()
    if not name:
        raise ConfigError(f"methods: expected NAME or NAME:KEY=VALUE, got {spec!r}")
    from ..methods.registry import parse_setting

    overrides: dict[str, Any] = {}
    for item in items:
        parsed = parse_setting(item)
        if parsed is None:
            raise ConfigError(f"methods: expected NAME:KEY=VALUE in {spec!r}, got {item!r}")
        key, value = parsed
        overrides[key] = tuple(value) if isinstance(value, list) else value
    return name, overrides


def _scaled_overrides(name: str, steps_scale: float) -> dict[str, Any]:
    from ..methods.registry import get_method

    if steps_scale == 1.0:
        return {}
    cfg = get_method(name).default_config()
    fields = {f.name for f in dataclasses.fields(cfg)}
    out: dict[str, Any] = {}
    for knob in ("steps", "n_masks"):
        if knob in fields and isinstance(getattr(cfg, knob), int):
            out[knob] = max(1, round(getattr(cfg, knob) * steps_scale))
    return out


def _passes(name: str, overrides: dict[str, Any], size: int) -> tuple[float, float]:
    """Estimated (forward+backward, forward-only) model passes per image of one method."""
    from ..methods.registry import get_method, resolve_config

    cfg = resolve_config(get_method(name), overrides)
    steps = getattr(cfg, "steps", None)
    if isinstance(steps, int):
        areas = getattr(cfg, "area_tuple", None) or (1,)
        games = 2 if getattr(cfg, "game", "") == "dual" else 1
        probe = 0.0
        if getattr(cfg, "start", None) == "occlusion":  # the occlusion start: one forward per window
            from ..methods.start import probe_size, probe_windows

            probe = float(len(probe_windows((size, size), *probe_size(cfg, (size, size)))))
        return float(steps * len(areas) * games), 4.0 + probe
    if isinstance(getattr(cfg, "n_masks", None), int):
        return 0.0, float(cfg.n_masks) + 1
    if name == "occlusion":  # measured: 843 passes at 64 px (docs/benchmarks.md), ~ the pixel count
        return 0.0, 843.0 * (size / 64) ** 2
    if name in ("random", "center"):
        return 0.0, 0.0
    return 2.0, 1.0  # gradient, Grad-CAM: a forward and a backward


#: Largest image side ``size`` (the timing batch of the estimate, 64 images, is 0.8 GB at
#: 1024 px).
MAX_SIZE = 1024
#: Largest ``n × size²`` (the float32 images alone take 3.2 GB at this bound).
MAX_PIXELS = 1 << 28
#: Largest ``steps_scale`` (the 800-step extremal then runs 800 000 steps per image).
MAX_STEPS_SCALE = 1000.0


@dataclass(frozen=True)
class BenchmarkSettings:
    """Settings of :func:`run_benchmark`, checked by :func:`check_benchmark_settings`.

    Attributes:
        n, size, batch_size, curve_steps, seed: as given (ints in range).
        steps_scale: a float in ``(0, MAX_STEPS_SCALE]``.
        methods: the method entries, in order (the default set filled in).
        variants: entry → ``(preset name, overrides)`` (``steps_scale`` applied, explicit
            settings win).
        device: the :class:`torch.device` (``"auto"`` resolved).
        family: the family name.
    """

    n: int
    size: int
    steps_scale: float
    seed: int
    batch_size: int
    curve_steps: int
    methods: tuple[str, ...]
    variants: dict[str, tuple[str, dict[str, Any]]]
    device: torch.device
    family: str


def check_benchmark_settings(
    *,
    n: Any = 200,
    methods: Sequence[str] | str | None = None,
    size: Any = 64,
    steps_scale: Any = 1.0,
    seed: Any = 0,
    batch_size: Any = 16,
    curve_steps: Any = 100,
    device: Any = "cpu",
    family: Any = "shapes",
    names: dict[str, str] | None = None,
) -> BenchmarkSettings:
    """Check every setting of :func:`run_benchmark` without loading a model or drawing an image.

    Ranges: ``n >= 1``; ``32 <= size <= MAX_SIZE`` (1024); ``n · size² <= MAX_PIXELS``
    (2**28); ``batch_size >= 1``; ``1 <= curve_steps <= size²``; ``steps_scale`` a finite
    number in ``(0, MAX_STEPS_SCALE]`` (1000); ``seed`` in ``[0, 2**64 - number of batches]``;
    known methods with valid settings, none twice; a ``device`` this build and machine have
    (``"auto"``: CUDA, else MPS, else CPU); a known ``family``.

    Args:
        names: how errors name each argument, e.g. ``{"n": "--n", "steps_scale": "--steps-scale"}``
            (default: the argument's own name).

    Returns:
        :class:`BenchmarkSettings`.

    Raises:
        ConfigError: naming the argument (through ``names``), what was expected and what
            arrived, e.g. ``--size: expected an int in [32, 1024], got 0``.
    """
    from .._runtime import check_device, check_seed
    from ..data import get_family
    from ..methods.registry import get_method, resolve_config
    from ..methods.registry import methods as registered

    names = names or {}

    def nm(key: str) -> str:
        return names.get(key, key)

    def whole(v: Any, key: str, low: int, high: int | None = None) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or v < low or (high is not None and v > high):
            want = f"an int >= {low}" if high is None else f"an int in [{low}, {high}]"
            raise ConfigError(f"{nm(key)}: expected {want}, got {v!r}")
        return int(v)

    get_family(family, nm("family"))  # ConfigError naming the valid families
    n = whole(n, "n", 1)
    size = whole(size, "size", 32, MAX_SIZE)
    if n * size * size > MAX_PIXELS:
        raise ConfigError(f"{nm('n')}: {n} images of {size}x{size} px are {n * size * size} pixels, more than the "
                          f"{MAX_PIXELS} the benchmark holds in memory; lower {nm('n')} or {nm('size')}")
    batch_size = whole(batch_size, "batch_size", 1)
    if isinstance(curve_steps, int) and not isinstance(curve_steps, bool) and curve_steps > size * size:
        raise ConfigError(f"{nm('curve_steps')}: expected an int in [1, {size * size}] (at most one step per pixel "
                          f"of a {size}x{size} image), got {curve_steps}")
    curve_steps = whole(curve_steps, "curve_steps", 1)
    if isinstance(steps_scale, bool) or not isinstance(steps_scale, (int, float)) or not (
        math.isfinite(steps_scale) and 0 < steps_scale <= MAX_STEPS_SCALE
    ):
        raise ConfigError(f"{nm('steps_scale')}: expected a number in (0, {MAX_STEPS_SCALE:g}], got {steps_scale!r}")
    steps_scale = float(steps_scale)
    # The draw needs seed >= 0; batch b is explained with seed + b (a 64-bit generator seed).
    seed = check_seed(seed, nm("seed"), low=0, span=-(-n // batch_size))
    if methods is None:
        methods = [m for m in DEFAULT_METHODS if m in registered()]
    elif isinstance(methods, str):
        methods = [methods]
    methods = list(methods)
    if not methods:
        raise ConfigError(f"{nm('methods')}: expected at least one method name")
    variants: dict[str, tuple[str, dict[str, Any]]] = {}
    for m in methods:
        try:
            name, explicit = parse_variant(m)
            spec = get_method(name)  # ConfigError listing the valid names
        except ConfigError as e:
            text = str(e)
            for prefix in ("methods: ", "method: "):
                if text.startswith(prefix):
                    text = text[len(prefix):]
            raise ConfigError(f"{nm('methods')}: {text}") from None
        overrides = {**_scaled_overrides(name, steps_scale), **explicit}  # explicit settings win
        try:
            resolve_config(spec, overrides)  # fail before hours of work, naming the entry
        except TypeError as e:
            raise ConfigError(f"{nm('methods')}: invalid setting in {m!r} ({e})") from None
        except ConfigError as e:
            raise ConfigError(f"{nm('methods')}: {m!r}: {e}") from None
        if m in variants:
            raise ConfigError(f"{nm('methods')}: {m!r} given twice in {methods}")
        variants[m] = (name, overrides)
    dev = check_device(device, nm("device"))  # unknown / absent / meta devices refused up front
    return BenchmarkSettings(n=n, size=size, steps_scale=steps_scale, seed=seed, batch_size=batch_size,
                             curve_steps=curve_steps, methods=tuple(methods), variants=variants, device=dev,
                             family=family)


def estimate_seconds(
    methods: Sequence[str],
    *,
    n: int,
    size: int = 64,
    steps_scale: float = 1.0,
    batch_size: int = 16,
    curve_steps: int = 100,
    device: str | torch.device = "cpu",
    model: torch.nn.Module | None = None,
    family: str = "shapes",
) -> dict[str, float]:
    """Seconds :func:`run_benchmark` will take per method, estimated on this machine.

    Times a forward pass on 64 images and a forward+backward pass on ``batch_size`` images
    (the fastest of 5 each), then multiplies by each method's passes per image (its steps × areas,
    RISE's masks, occlusion's windows) plus the metrics' three curves of ``curve_steps + 1``
    forward passes, times ``n``. A rough figure: the optimisers' own arithmetic and early
    stopping are not counted, and the timing reflects the machine's load at that moment
    (docs/cli.md gives runs where it was right and one, on a shared machine, where it was
    several times too low).

    Raises:
        ConfigError: a setting :func:`check_benchmark_settings` refuses (checked before any
            model is loaded or timed).
    """
    checked = check_benchmark_settings(n=n, methods=methods, size=size, steps_scale=steps_scale,
                                       batch_size=batch_size, curve_steps=curve_steps, device=device, family=family)
    n, size, steps_scale, device = checked.n, checked.size, checked.steps_scale, checked.device
    batch_size, curve_steps = checked.batch_size, checked.curve_steps
    if model is None:
        from ..demo import demo_preprocessing, load_demo_model

        # The default family calls it as before (callers may substitute load_demo_model).
        model = load_demo_model(device=device) if family == "shapes" else load_demo_model(device=device, family=family)
        trained = int(demo_preprocessing(family)["input_size"])
        if size != trained:
            model = _ResizedInput(model, trained)
    fwd = fb = math.inf
    b = max(1, min(int(batch_size), int(n)))  # the optimisers' batch: one explain() call
    xf = torch.randn(64, 3, size, size, device=device)  # RISE / occlusion / the metrics batch 64-100
    xb = torch.randn(b, 3, size, size, device=device)
    for _ in range(5):  # the fastest of 5: what the machine does when nothing else runs
        t0 = time.perf_counter()
        with torch.no_grad():
            model(xf)
        fwd = min(fwd, (time.perf_counter() - t0) / xf.shape[0])
        xg = xb.clone().requires_grad_(True)
        t0 = time.perf_counter()
        model(xg).sum().backward()
        fb = min(fb, (time.perf_counter() - t0) / b)
    out: dict[str, float] = {}
    for m, (name, overrides) in checked.variants.items():
        p_fb, p_fwd = _passes(name, overrides, size)
        p_fwd += 3 * (curve_steps + 1)
        out[m] = n * (p_fb * fb + p_fwd * fwd)
    return out


def run_benchmark(
    *,
    n: int = 200,
    methods: Sequence[str] | None = None,
    size: int = 64,
    steps_scale: float = 1.0,
    seed: int = 0,
    batch_size: int = 16,
    device: str | torch.device = "cpu",
    progress: bool = True,
    model: torch.nn.Module | Callable | None = None,
    curve_steps: int = 100,
    family: str = "shapes",
) -> BenchmarkResult:
    """Run every method on ``n`` held-out images of a ground-truth family and score it.

    Args:
        n: number of ``"test"``-split images (drawn with ``seed``).
        methods: method names (default :data:`DEFAULT_METHODS`), each optionally with
            settings, ``"paper:early_stop=40"`` (see :func:`parse_variant`); rows are
            labelled by these strings.
        size: image side in pixels, in ``[32, 1024]``; ``n · size²`` at most
            :data:`MAX_PIXELS` (2**28).
        steps_scale: multiplies the ``steps`` of optimisation methods (and RISE's
            ``n_masks``): ``max(1, round(default · steps_scale))``; in ``(0, 1000]``.
        seed: seed of the data draw; batch ``b`` is explained with ``seed + b``.
        batch_size: images per :func:`explain` call.
        device: where the model and images live; ``"auto"``: CUDA, else MPS, else CPU.
        progress: a tqdm bar on stderr counting the images explained (methods × ``n``), labelled
            with the method running now (``method 3/8 rise: explaining``, then ``scoring``).
        model: classifier taking images normalised with the demo mean / std (default:
            the family's demo model, :func:`~meaningful_perturbation.demo.load_demo_model`).
        curve_steps: grid steps of the deletion / insertion / minimal-area curves, in
            ``[1, size²]``.
        family: ``"shapes"`` (ShapeEvidence, default) or ``"textures"`` (TextureEvidence);
            see :data:`meaningful_perturbation.data.FAMILIES`. Recorded in ``settings``.

    Returns:
        :class:`BenchmarkResult`.

    Raises:
        ConfigError: a setting :func:`check_benchmark_settings` refuses (an int out of range,
            ``n · size²`` beyond :data:`MAX_PIXELS`, an unknown ``family`` or method, ``seed``
            outside ``[0, 2**64 - number of batches]``, a ``device`` this build or machine
            lacks), checked before the model is loaded or any image drawn.
    """
    from .. import metrics as M
    from ..api import explain
    from ..data import get_family

    fam = get_family(family)  # before any work: ConfigError naming the valid families
    checked = check_benchmark_settings(n=n, methods=methods, size=size, steps_scale=steps_scale, seed=seed,
                                       batch_size=batch_size, curve_steps=curve_steps, device=device, family=family)
    n, size, steps_scale, seed = checked.n, checked.size, checked.steps_scale, checked.seed
    batch_size, curve_steps, device = checked.batch_size, checked.curve_steps, checked.device
    methods, variants = list(checked.methods), checked.variants

    if model is None:
        from ..demo import demo_preprocessing, load_demo_model

        # The default family calls it as before (callers may substitute load_demo_model).
        model = load_demo_model(device=device) if family == "shapes" else load_demo_model(device=device, family=family)
        model_name = "demo" if family == "shapes" else f"demo:{family}"
        trained = int(demo_preprocessing(family)["input_size"])
        if size != trained:  # the demo CNN is accurate at its training size only (MODEL_CARD.md)
            model = _ResizedInput(model, trained)
            model_name = f"{model_name} (inputs resized to {trained} px)"
    else:
        model_name = type(model).__name__
    if isinstance(model, torch.nn.Module):
        model = model.to(device).eval()

    data = fam.make(n, size=size, split="test", seed=seed)
    t = data.to_tensors(normalize=True)
    images = t.images.to(device)
    labels, masks, distractors = t.labels, t.masks, t.distractors
    has_distractors = distractors.reshape(n, -1).any(dim=1)
    with torch.no_grad():
        predicted = torch.cat([model(images[i : i + batch_size]).argmax(1).cpu() for i in range(0, n, batch_size)])
    accuracy = float((predicted == labels).double().mean())
    if accuracy < MIN_ACCURACY:
        import warnings

        warnings.warn(
            f"the model classifies only {accuracy:.0%} of the {n} benchmark images correctly "
            f"(size {size}); the explanations describe a model that is mostly wrong here",
            UserWarning,
            stacklevel=2,
        )
    tolerance = M.scaled_tolerance(size)
    batches = [(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]
    for m, (name, ov) in variants.items():  # a bad or foreign masker: refused before the first batch
        if name == "masker":
            from ..masker.model import check_masker

            try:
                check_masker(ov.get("masker", "demo"), model, input_size=(size, size), option="masker")
            except MeaningfulPerturbationError as e:
                raise type(e)(f"methods: {m!r}: {e}") from None

    bar = None
    if progress:
        from tqdm.auto import tqdm

        # Counted in images explained; the label names the method being run now (k of all).
        bar = tqdm(total=len(variants) * n, desc="benchmark", unit="image")

    rows: list[dict[str, Any]] = []
    per_image: dict[str, dict[str, list[float]]] = {}
    overrides_used: dict[str, dict[str, Any]] = {}
    try:
        for k, (label, (name, overrides)) in enumerate(variants.items()):
            overrides_used[label] = overrides
            if bar is not None:
                bar.set_description(f"method {k + 1}/{len(variants)} {label}: explaining")
            counter = _CountingModel(model) if isinstance(model, torch.nn.Module) else None
            calls = [0]

            def counted(z: torch.Tensor, _m=model) -> torch.Tensor:
                calls[0] += int(z.shape[0])
                return _m(z)

            explained_model = counter if counter is not None else counted
            saliency = torch.empty(n, size, size, dtype=torch.float32)
            seconds = 0.0
            for b, (lo, hi) in enumerate(batches):
                start = time.perf_counter()
                ex = explain(
                    explained_model, images[lo:hi], labels[lo:hi].to(device), method=name, seed=seed + b, **overrides
                )
                seconds += time.perf_counter() - start
                saliency[lo:hi] = ex.saliency.detach().float().cpu()
                if bar is not None:
                    bar.update(hi - lo)
            if bar is not None:
                bar.set_description(f"method {k + 1}/{len(variants)} {label}: scoring")
            passes = (counter.images if counter is not None else calls[0]) / n

            exact = M.pointing_game(saliency, masks, tolerance=0).hits.double()
            near = M.pointing_game(saliency, masks, tolerance=tolerance).hits.double()
            valid = masks.reshape(n, -1).any(dim=1)
            exact = torch.where(valid, exact, torch.full_like(exact, math.nan))
            near = torch.where(valid, near, torch.full_like(near, math.nan))
            rank = M.rank_accuracy(saliency, masks)
            dmass = M.distractor_mass(saliency, distractors)
            dmass = torch.where(has_distractors, dmass, torch.full_like(dmass, math.nan))
            with torch.no_grad():
                sal_dev = saliency.to(device)
                tgt = labels.to(device)
                dele = M.deletion_insertion(model, images, sal_dev, tgt, mode="deletion", steps=curve_steps).auc
                ins = M.deletion_insertion(model, images, sal_dev, tgt, mode="insertion", steps=curve_steps).auc
                area = M.minimal_area(model, images, sal_dev, tgt, kind="sufficient", steps=curve_steps)
            values = {
                "exact_pointing": exact,
                "pointing_tol": near,
                "rank_accuracy": rank,
                "distractor_mass": dmass,
                "deletion_auc": dele.cpu(),
                "insertion_auc": ins.cpu(),
                "min_sufficient_area": area.cpu(),
            }
            row: dict[str, Any] = {"method": label}
            for k, _ in METRICS:
                row[k] = M.bootstrap_ci(values[k], seed=seed)
            row["seconds_per_image"] = seconds / n
            row["passes_per_image"] = float(passes)
            row["n_distractor_images"] = int(has_distractors.sum())
            rows.append(row)
            per_image[label] = {k: [float(u) for u in v.double().tolist()] for k, v in values.items()}
    finally:
        if bar is not None:
            bar.close()

    settings = {
        "family": family,
        "n": n,
        "methods": methods,
        "size": size,
        "steps_scale": steps_scale,
        "seed": seed,
        "batch_size": batch_size,
        "device": str(device),
        "curve_steps": curve_steps,
        "tolerance_px": tolerance,
        "split": "test",
        "overrides": overrides_used,
        "model": model_name,
        "model_accuracy": accuracy,
        "torch": torch.__version__,
    }
    return BenchmarkResult(rows=rows, settings=settings, per_image=per_image, images=_image_info(data))
