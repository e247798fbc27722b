"""Overhead of one optimisation step over a bare forward+backward (DESIGN §5).

For a ~0.19 GMAC CNN at 224×224 (or any model ``--model SPEC`` names, e.g.
``torchvision:resnet50:NONE``: every spec :func:`~meaningful_perturbation.models.load_model`
accepts), measures the time per step of the ``paper``, ``seed`` and
``extremal`` loops (``core.loop.optimise`` on a problem built by each preset) and of a bare
forward+backward with input gradients only, at the same effective batch (images × areas),
interleaved round-robin in one process after warm-ups; prints the median of each and the
ratio.

    python benchmarks/overhead.py [--model SPEC] [--rounds 9] [--steps 5] [--size 224] [--device cpu]

``--count`` times nothing: it counts, on the CPU, the operators that launch a kernel (views
excluded) per step of the bare forward+backward and of each preset's step, taking the paths
a CUDA step takes
(fused optimiser, ``F.fold`` in the smooth mask's backward). On a GPU where a step is bound
by kernel launches (ResNet-50 at batch 1-8 on an H200: the bare pass takes the same time at
both batches), the method's share of the launches is what the time ratio measures.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
import warnings

import torch
import torch.nn as nn

from meaningful_perturbation.core.frozen import frozen
from meaningful_perturbation.core.loop import optimise
from meaningful_perturbation.core.objective import Targets
from meaningful_perturbation.methods import extremal, paper
from meaningful_perturbation.methods import seed as seed
from meaningful_perturbation.methods.common import Context
from meaningful_perturbation.methods.registry import get_method, resolve_config
from meaningful_perturbation.models import load_model


def small_cnn(classes: int = 1000) -> nn.Module:
    """4 stride-2 conv blocks, GAP, linear: ≈0.19 GMAC at 224² (DESIGN §5's model size)."""

    def block(cin, cout):
        return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))

    return nn.Sequential(block(3, 32), block(32, 64), block(64, 128), block(128, 256), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(256, classes))


def macs(model: nn.Module, size: int) -> float:
    total = 0
    hooks = []

    def hook(mod, inp, out):
        nonlocal total
        if isinstance(mod, nn.Conv2d):
            total += out.numel() * mod.in_channels // mod.groups * mod.kernel_size[0] * mod.kernel_size[1]
        elif isinstance(mod, nn.MultiheadAttention):  # its projections bypass Linear.forward
            q = inp[0]
            tokens = q.numel() // q.shape[-1]  # N·L
            length = q.shape[1] if mod.batch_first else q.shape[0]
            total += tokens * 4 * mod.embed_dim * mod.embed_dim + 2 * tokens * length * mod.embed_dim
        elif isinstance(mod, nn.Linear):
            total += out.numel() * mod.in_features  # every token / position

    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear, nn.MultiheadAttention)):
            hooks.append(m.register_forward_hook(hook))
    with torch.no_grad():
        model(torch.zeros(1, 3, size, size, device=next(model.parameters()).device))
    for h in hooks:
        h.remove()
    return total / 1e9


def make_problem(name: str, model, x, **overrides):
    spec = get_method(name)
    cfg = resolve_config(spec, overrides)
    with torch.no_grad():
        logits = model(x)
    g = torch.Generator().manual_seed(0)
    ctx = Context(model, x, Targets([[int(c)] for c in logits.argmax(1)], x.device), logits, 0, g, name)
    build = {"paper": paper.build_problem, "seed": seed.build_problem, "extremal": extremal.build_problem}[name]
    return build(ctx, cfg)


def sync(device) -> None:
    """Wait for queued GPU work, so wall-clock timers measure it (no-op on the CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def bare(model, x):
    def step():
        xi = x.detach().requires_grad_(True)
        out = model(xi)
        out[:, 0].sum().backward()

    return step


def default_steps(method):
    """The preset's default number of steps (300 for ``paper``, 800 for ``extremal``)."""
    from meaningful_perturbation.methods.registry import get_method

    return get_method(method).default_config().steps


def whole(model, x, method, steps, **overrides):
    """Seconds of one whole ``explain`` call (clean pass, set-up, ``steps`` steps, read-out)."""
    from meaningful_perturbation import explain

    def run():
        sync(x.device)
        t0 = time.perf_counter()
        with warnings.catch_warnings():  # few steps on random weights: area warnings are expected
            warnings.simplefilter("ignore")
            explain(model, x, method=method, steps=steps, head="logits", **overrides)
        sync(x.device)
        return time.perf_counter() - t0

    return run


def loop(problem, steps):
    """Per-step time of the loop: (T(1 + steps) − T(1)) / steps, so one-time set-up inside
    ``optimise`` (padded/mirrored levels, optimiser state) is not counted as per-step cost."""

    def run():
        dev = problem.levels.device
        problem.steps = 1
        sync(dev)
        t0 = time.perf_counter()
        optimise(problem)
        sync(dev)
        t1 = time.perf_counter()
        problem.steps = 1 + steps
        optimise(problem)
        sync(dev)
        t2 = time.perf_counter()
        return (t2 - t1) - (t1 - t0)

    return run


VIEW_OPS = {"view", "detach", "unsqueeze", "expand", "slice", "select", "transpose", "t", "squeeze", "_unsafe_view",
            "unbind", "permute", "alias", "as_strided", "unfold", "split", "_reshape_alias", "_local_scalar_dense",
            "_record_function_enter_new", "_record_function_exit", "lift_fresh", "empty"}


def count_kernels(fn) -> int:
    """Kernel-launching operators (views excluded) that one call of ``fn`` dispatches."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        kernels = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.overloadpacket.__name__ not in VIEW_OPS:
                Count.kernels += 1
            return func(*args, **(kwargs or {}))

    with Count():
        fn()
    return Count.kernels


def count_main(model, size: int, batches, methods) -> None:
    """Kernels per step of each row, CUDA paths taken on the CPU (see the module docstring)."""
    import importlib

    smoothmax = importlib.import_module("meaningful_perturbation.core.smoothmax")
    common = importlib.import_module("meaningful_perturbation.methods.common")

    plain = common.optimizer

    def fused(kind, params, **hyper):
        return kind(params, fused=True, **hyper)

    def per_step(problem):
        problem.steps = 2
        k2 = count_kernels(lambda: optimise(problem))
        problem.steps = 6
        return (count_kernels(lambda: optimise(problem)) - k2) / 4

    print("\nkernel-launching operators per step (views excluded), CUDA paths (fused optimiser, F.fold) "
          "taken on the CPU\n")
    print("| configuration | kernels/step | bare fwd+bwd kernels | method kernels | method / bare |")
    print("|---|---|---|---|---|")
    # The presets bound `optimizer` at import (`from .common import optimizer`): patch every
    # module's name, not only common's, or the count keeps the CPU's unfused update.
    import sys

    bound = [m for name, m in list(sys.modules.items())
             if name.startswith("meaningful_perturbation.methods") and getattr(m, "optimizer", None) is plain]
    smoothmax.FOLD_ON_CPU = True
    for m in bound:
        m.optimizer = fused
    try:
        for b in batches:
            x = torch.randn(b, 3, size, size)
            kb = count_kernels(bare(model, x))
            for name in methods:
                ov = {"extremal1": {"areas": (0.1,)}, "extremal4": {}}.get(name, {})
                base = "extremal" if name.startswith("extremal") else name
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    k = per_step(make_problem(base, model, x, **ov))
                # the bare pass launches as many kernels at any batch (images x areas included)
                print(f"| {name} b={b} | {k:.0f} | {kb} | {k - kb:.0f} | {(k - kb) / kb:.2f} |")
    finally:
        smoothmax.FOLD_ON_CPU = False
        for m in bound:
            m.optimizer = plain


ROWS = ("paper", "seed", "extremal1", "extremal4")  # extremal1: one area; extremal4: the 4 default areas
WHOLE = ("paper", "extremal")  # --whole: whole explain() calls of these presets (extremal: its 4 default areas)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--steps", type=int, default=5, help="optimisation steps per timed call")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    ap.add_argument("--model", default=None, metavar="SPEC",
                    help="a model spec as for mperturb --model (torchvision:resnet50:NONE, timm:NAME, ...); "
                         "default: the built-in ~0.19 GMAC CNN")
    ap.add_argument("--methods", nargs="+", default=list(ROWS), choices=list(ROWS),
                    help="rows to time (default all; fewer for big models on a CPU)")
    ap.add_argument("--whole", type=int, default=0, metavar="STEPS",
                    help="also time whole explain() calls of paper and extremal with STEPS steps each "
                         "(clean pass, set-up and read-out included) against STEPS x bare fwd+bwd")
    ap.add_argument("--count", action="store_true",
                    help="count kernels and device reads per step instead of timing (CPU; see the docstring)")
    ap.add_argument("--trust-code", action="store_true", help="allow specs that run code (python:, pickles)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.model:
        model = load_model(args.model, trust_code=args.trust_code, device=args.device).model.eval()
        what = args.model
    else:
        model = small_cnn().to(args.device).eval()
        what = "built-in CNN"
    print(f"model: {what}, {macs(model, args.size):.3f} GMAC (conv, linear, attention) at {args.size}²; torch {torch.__version__}; "
          f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads; device {args.device}")
    S = args.steps
    if args.count:
        with frozen(model):
            count_main(model, args.size, args.batches, args.methods)
        return
    with frozen(model):
        cases = {}
        for b in args.batches:
            x = torch.randn(b, 3, args.size, args.size, device=args.device)
            x4 = torch.randn(b * 4, 3, args.size, args.size, device=args.device)
            want = set(args.methods)
            if want & {"paper", "seed", "extremal1"}:
                cases[f"bare b={b}"] = (bare(model, x), S)
            if "extremal4" in want:
                cases[f"bare b={b}x4"] = (bare(model, x4), S)
            if "paper" in want:
                cases[f"paper b={b}"] = (loop(make_problem("paper", model, x), S), S)
            if "seed" in want:
                cases[f"seed b={b}"] = (loop(make_problem("seed", model, x), S), S)
            if "extremal1" in want:
                cases[f"extremal 1 area b={b}"] = (loop(make_problem("extremal", model, x, areas=(0.1,)), S), S)
            if "extremal4" in want:
                cases[f"extremal 4 areas b={b}"] = (loop(make_problem("extremal", model, x), S), S)
            if args.whole:
                cases.setdefault(f"bare b={b}", (bare(model, x), S))
                cases.setdefault(f"bare b={b}x4", (bare(model, x4), S))
                for m in WHOLE:
                    cases[f"whole {m} b={b}"] = (whole(model, x, m, args.whole), args.whole)
        times = {k: [] for k in cases}
        for fn, _ in cases.values():  # warm-up
            fn()
        for r in range(args.rounds):
            for name, (fn, reps) in cases.items():
                if name.startswith("bare"):
                    sync(args.device)
                    t0 = time.perf_counter()
                    for _ in range(reps):
                        fn()
                    sync(args.device)
                    dt = (time.perf_counter() - t0) / reps
                else:
                    dt = fn() / reps
                times[name].append(dt)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"\nmedian of {args.rounds} interleaved rounds, {S} steps per timed call; ratio = step / bare fwd+bwd at the same effective batch\n")
    print("| configuration | ms/step | bare fwd+bwd ms | ratio | target |")
    print("|---|---|---|---|---|")
    for b in args.batches:
        base, base4 = med.get(f"bare b={b}"), med.get(f"bare b={b}x4")
        rows = [
            (f"paper b={b}", base, "<= 1.15" if b >= 8 else "<= 1.3"),
            (f"seed b={b}", base, "<= 1.15" if b >= 8 else "<= 1.3"),
            (f"extremal 1 area b={b}", base, ""),
            (f"extremal 4 areas b={b}", base4, "<= 1.25" if b >= 8 else ""),
        ]
        for name, ref, target in rows:
            if name not in med:
                continue
            print(f"| {name} | {med[name] * 1e3:.1f} | {ref * 1e3:.1f} | {med[name] / ref:.2f} | {target} |")
    if args.whole:
        print(f"\nwhole explain() with {args.whole} steps: ratio = call time / ({args.whole} x bare fwd+bwd at the "
              "same effective batch); the clean pass, set-up and read-out count against the method\n")
        print("| configuration | s/explain | steps x bare s | ratio | fixed s | ratio at the default steps | issue-14 target |")
        print("|---|---|---|---|---|---|---|")
        for b in args.batches:
            for m, ref, step_row, target in (
                ("paper", med[f"bare b={b}"], f"paper b={b}", "<= 1.10" if b >= 8 else ""),
                ("extremal", med[f"bare b={b}x4"], f"extremal 4 areas b={b}", "<= 1.20" if b >= 8 else ""),
            ):
                t = med[f"whole {m} b={b}"] * args.whole  # stored per step
                # The call's fixed cost (clean pass, levels, initialisation, read-out) is the call
                # minus its steps; at the preset's default schedule (300 / 800 steps) it is spread
                # over that many steps: ratio_S = (fixed + S·step) / (S·bare).
                extra = "| | "
                if step_row in med:
                    fixed = t - args.whole * med[step_row]
                    S_def = default_steps(m)
                    extra = f"| {fixed:.3f} | {(fixed + S_def * med[step_row]) / (S_def * ref):.2f} ({S_def} steps) "
                print(f"| {m} b={b} | {t:.3f} | {ref * args.whole:.3f} | {t / (ref * args.whole):.2f} {extra}| {target} |")


if __name__ == "__main__":
    main()
