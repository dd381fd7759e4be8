"""Choose engine, compute precision and batch size by a short measurement, not fixed defaults.

On the 2-core CPUs this project is built on, the best batch size for a mobile net is 4 while a
ResNet prefers more; bf16 autocast was 1.5–2.8× faster than fp32 on a CPU with AVX512-BF16 and
15× slower on one without; ONNX Runtime beat PyTorch eager by 1.5× on one CPU, OpenVINO by 1.9×
(and 3.6× in its bf16). So ``auto`` times a few forward passes on synthetic ``uint8`` input at the
real image size and keeps the fastest. Precision changes the numbers, so it goes into the cache
key (with the engine, for a reduced precision); the whole choice is memoised per machine by the
caller, so reruns and resumes use the same settings.

The candidates are timed in order of preference, exact fp32 first, plain torch first of all; a
later one is kept only if it beats the one kept so far by ``MARGIN``. So a reduced precision is
chosen only by measurement, and the choice is recorded and named like any other.

The probe must never cost more than it can save. It runs under a hard budget of
``PROBE_BUDGET_S`` seconds, and within it spends in two parts:

1. *The engines compared*: the candidates at the preferred precision (exact fp32: plain torch,
   OpenVINO, ONNX Runtime on a CPU) at the trial batch, whatever the size of the run. Their
   answer is memoised per model and machine by the caller and reused by every later run of any
   size, so a share of this one run is no measure of its worth; and the engine is the largest
   exact lever (Lite0 on this project's 2-core CPU: OpenVINO fp32 130.5 img/s forward-only,
   torch fp32 34.6). Each compared engine's timing window is a fair part of what is left, so the
   first cannot starve the others. Under the 5% share alone, a 3,000-image run on that CPU
   had 1.56 s: torch's baseline and an OpenVINO build spent 3.5 s, no converted engine was
   timed, and ``auto`` silently kept torch (50.9 img/s against OpenVINO's 73.5).
2. *The rest* (reduced precisions, batch sizes): at most ``PROBE_SHARE`` of the run being tuned,
   estimated from the first measurement (exact fp32 on plain torch, which is also the
   fallback), or nothing beyond the comparison if that already spent more.

So the budget is the larger of the comparison's cost and the share, never above the ceiling. A
candidate is built only if a batch of it could fit what is left at the fastest single-image rate
seen so far; once built, it times one single-image forward and its batch starts only if its
estimated cost fits, so a precision that is 15× slower costs one image, not a minute. An engine
that the budget left untimed is named in the note (the summary line prints it), never passed
over in silence. The caller skips the probe altogether for datasets too small to repay it.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from featpipe.choices import ENGINES
from featpipe.errors import ArgumentError
from featpipe.runtime.conversions import ConversionError, Conversions
from featpipe.runtime.devices import check_precision
from featpipe.runtime.engines import Engine, Normalized, OnnxEngine, TorchEngine, export_onnx
from featpipe.runtime.openvino_engine import OpenVinoEngine, export_openvino, openvino_has_bf16

CPU_BATCHES = (4, 8, 16, 32)
CUDA_BATCHES = (64, 128, 256)
# A faster-looking candidate must win by this factor: ties go to exact fp32 / plain torch.
MARGIN = 1.10
# The probe's hard ceiling, and its share of the expected run (at the fp32 rate it measures
# first): on a loaded 2-core machine an unbounded probe spent most of a 472 s, 120-image run.
PROBE_BUDGET_S = 5.0
PROBE_SHARE = 0.05
# An explicitly requested precision this many times slower than fp32 earns a warning.
FAR_SLOWER = 2.0


@dataclass
class Settings:
    precision: str
    batch_size: int
    channels_last: bool
    engine: str
    measured: dict[str, float] = field(default_factory=dict)
    note: str = ""
    probe: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "precision": self.precision,
            "batch_size": self.batch_size,
            "channels_last": self.channels_last,
            "engine": self.engine,
            "probe_images_per_s": self.measured,
            "probe_note": self.note,
            "probe": self.probe,
        }


def measure(
    engine: Engine,
    batch: int,
    size: tuple[int, int],
    min_seconds: float = 0.3,
    windows: int = 1,
    deadline: float | None = None,
) -> float:
    """Forward-only images/s on random ``uint8`` input: the extraction ceiling for a setting.

    With ``windows > 1`` the best of several short windows is returned: on a shared machine the
    least disturbed window is the fairest basis for comparing two candidates. Past ``deadline``
    (a ``perf_counter`` time) no further window starts; if the warm-up already ran past it, its
    own (pessimistic) rate is the answer.
    """
    x = torch.randint(0, 256, (batch, 3, *size), dtype=torch.uint8)
    start = time.perf_counter()
    engine(x)  # warm-up: allocation, kernel selection
    warm = batch / (time.perf_counter() - start)
    rates = []
    for _ in range(windows):
        if deadline is not None and time.perf_counter() >= deadline:
            break
        start = time.perf_counter()
        until = start + min_seconds / windows
        more = itertools.takewhile(
            lambda _, until=until: time.perf_counter() < until, itertools.repeat((None, x))
        )
        # Through ``map``, as the extraction loop feeds it: OpenVINO's streams each take a
        # batch of their own.
        calls = sum(1 for _ in engine.map(itertools.chain([(None, x)], more)))
        rates.append(calls * batch / (time.perf_counter() - start))
    return max(rates, default=warm)


def build_engine(
    settings: dict[str, Any], module: Normalized, device: torch.device, files: Conversions
) -> Engine:
    """The engine a settings record describes (the same one the probe timed); a network the
    engine cannot take raises :class:`~featpipe.runtime.conversions.ConversionError`."""
    if settings["engine"] == "onnxruntime":
        return OnnxEngine(export_onnx(module, files), torch.get_num_threads(), spin=False)
    if settings["engine"] == "openvino":
        export_openvino(module, files)
        return OpenVinoEngine(files, settings["precision"], torch.get_num_threads())
    return TorchEngine(module, device, settings["precision"], settings["channels_last"])


def half_precision(device: torch.device) -> str:
    """The reduced precision worth trying on ``device``."""
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return "fp16"
    return "bf16"


def openvino_bf16_refusal(is_conv: bool) -> str:
    """Why OpenVINO's bf16 is refused for this network on this CPU ("" where it runs): the one
    rule :func:`check_engine` refuses an explicit request by and ``auto`` leaves it out by.

    Without bf16 units OpenVINO would quietly compute fp32 under a bf16 hint. On a transformer,
    OpenVINO 2026.4's bf16 on a 2-core Xeon with AMX (ViT-Tiny at batch 32) crashed the process
    (segfault) in 3 of 7 runs and ran 16 img/s against its fp32's 85 (2026-12-07; convnets ran
    bf16 without a crash there); a crash cannot be caught, so it is never built.
    """
    if not openvino_has_bf16():
        return "bf16: OpenVINO has no bf16 on this CPU (no AVX512-BF16 or AMX): use fp32"
    if not is_conv:
        return (
            "bf16: OpenVINO's bf16 crashed (segfault) on a vision transformer in 3 of 7 runs on "
            "a CPU with AMX, and ran 5x slower than its fp32; use --precision fp32 with --engine "
            "openvino, or --engine torch for bf16"
        )
    return ""


def check_engine(device: torch.device, precision: str, engine: str, is_conv: bool) -> None:
    """Refuse, in one line, an engine that cannot run ``precision`` on ``device`` for this
    network (``is_conv``: a convolutional one; others are transformers)."""
    check_precision(device, precision)
    if engine not in ENGINES:
        raise ArgumentError("engine", f"{engine}: choose one of {', '.join(ENGINES)}")
    if engine == "onnxruntime" and (device.type != "cpu" or precision not in ("auto", "fp32")):
        raise ArgumentError(
            "engine", "onnxruntime runs fp32 on CPU: use device cpu, precision fp32"
        )
    if engine == "openvino" and device.type != "cpu":
        raise ArgumentError("engine", f"openvino runs on CPU, not {device.type}: use device cpu")
    if engine == "openvino" and precision == "bf16" and (why := openvino_bf16_refusal(is_conv)):
        raise ArgumentError("precision", why)


def candidates(
    device: torch.device, precision: str, engine: str, is_conv: bool
) -> list[tuple[str, str]]:
    """The (engine, precision) pairs a request leaves open, in order of preference: exact fp32
    before a reduced precision, plain torch before a converted network. OpenVINO comes before
    ONNX Runtime because it measured faster on this project's CPU (issue 25: 361 against 229
    img/s, Lite0 at batch 32), and a probe short of budget should time the likelier winner."""
    precisions = ["fp32", half_precision(device)] if precision == "auto" else [precision]
    engines = [engine] if engine != "auto" else ["torch"]
    if engine == "auto" and device.type == "cpu":
        engines += ["openvino", "onnxruntime"]
    return [(e, p) for p in precisions for e in engines if _computes(e, p, is_conv)]


def _computes(engine: str, precision: str, is_conv: bool) -> bool:
    """Whether ``engine`` computes ``precision`` on this machine for this network: ONNX Runtime
    only fp32, OpenVINO fp32 and bf16 where :func:`openvino_bf16_refusal` allows it."""
    if engine == "onnxruntime":
        return precision == "fp32"
    if engine == "openvino":
        return precision == "fp32" or (precision == "bf16" and not openvino_bf16_refusal(is_conv))
    return True


def untimed(
    device: torch.device,
    is_conv: bool,
    precision: str = "auto",
    batch_size: int | None = None,
    engine: str = "auto",
) -> Settings:
    """The settings when nothing is timed: exact fp32 on plain torch, unless asked otherwise."""
    check_engine(device, precision, engine, is_conv)
    batches = CUDA_BATCHES if device.type == "cuda" else CPU_BATCHES
    return Settings(
        "fp32" if precision == "auto" else precision,
        batch_size or batches[1],
        is_conv,
        "torch" if engine == "auto" else engine,
    )


class _Clock:
    """The probe's budget: a ceiling that shrinks to a share of the run once its cost is known."""

    def __init__(self, limit_s: float) -> None:
        self.start = time.perf_counter()
        self.limit_s = limit_s

    def spent(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return self.limit_s - self.spent()

    def shrink(self, share_s: float | None) -> None:
        """Down to ``share_s`` of the run (if known), never below what is already spent: the
        engines compared, what follows is paid from the share. Shrinking again changes
        nothing."""
        if share_s is not None:
            self.limit_s = min(self.limit_s, max(self.spent(), share_s))


def probe(
    module: Normalized,
    device: torch.device,
    is_conv: bool,
    files: Conversions,
    precision: str = "auto",
    batch_size: int | None = None,
    engine: str = "auto",
    images: int | None = None,
    budget_s: float = PROBE_BUDGET_S,
) -> Settings:
    """Pick engine, precision and batch size for ``module`` on ``device`` by timing them.

    ``images`` is the size of the run being tuned: once the engines are compared, the budget
    shrinks to ``PROBE_SHARE`` of its expected duration (see the module's docstring). Whatever
    is picked measured at least as fast as exact fp32 on plain torch; an explicit precision far
    slower than fp32, and an engine the budget left untimed, are named in the note.
    """
    check_engine(device, precision, engine, is_conv)
    clock = _Clock(budget_s)
    engines: dict[tuple[str, str], Engine] = {}
    per_image: dict[tuple[str, str], float] = {}  # seconds of one single-image forward
    rates: dict[tuple[str, str, int], float] = {}
    over_budget: set[str] = set()

    def ready(name: str, prec: str) -> None:
        """Build a candidate engine and time one image, once: whether the budget allows it is
        the caller's decision (the fp32 baseline and the far-slower check go ahead anyway)."""
        if (name, prec) in engines:
            return
        settings = {"engine": name, "precision": prec, "channels_last": is_conv}
        engines[(name, prec)] = build_engine(settings, module, device, files)
        per_image[(name, prec)] = 1 / measure(engines[(name, prec)], 1, module.input_size, 0.0)

    def window(among: int) -> float:
        """A timing window that leaves as much to each of the ``among - 1`` after it."""
        return min(0.6, max(0.0, clock.left()) / (2 * among))

    def fits(name: str, prec: str, batch: int, among: int) -> bool:
        """Whether a batch's warm-up, one call past its window and the window fit what is
        left: at the candidate's own single-image rate, or before it is built at the fastest
        seen so far (no build is started for a batch that cannot fit)."""
        per = per_image.get((name, prec), min(per_image.values(), default=0.0))
        return 2 * batch * per + window(among) <= clock.left()

    def timed(name: str, prec: str, batch: int, among: int = 1) -> float | None:
        """Images/s of one candidate, or None when it does not fit the budget. ``among``: how
        many candidates, this one first, are still to share what is left."""
        if (name, prec, batch) in rates:
            return rates[(name, prec, batch)]
        if not fits(name, prec, batch, among):
            over_budget.add(f"{name}-{prec}@{batch}")
            return None
        ready(name, prec)
        if not fits(name, prec, batch, among):
            over_budget.add(f"{name}-{prec}@{batch}")
            return None
        rates[(name, prec, batch)] = measure(
            engines[(name, prec)],
            batch,
            module.input_size,
            min_seconds=window(among),
            windows=3,
            deadline=clock.start + clock.limit_s,
        )
        return rates[(name, prec, batch)]

    def faster(a: float | None, b: float | None) -> bool:
        return a is not None and b is not None and a > MARGIN * b

    auto, auto_batch = "auto" in (precision, engine), batch_size is None
    explicit_engine = engine != "auto"
    # Whether exact fp32 on plain torch is an allowed answer (nothing explicit rules it out).
    may_fall_back = auto and precision in ("auto", "fp32") and engine in ("auto", "torch")
    batches = CUDA_BATCHES if device.type == "cuda" else CPU_BATCHES
    trial = batch_size or batches[1]
    pairs = candidates(device, precision, engine, is_conv) if auto else []
    # The engines compared at the preferred precision, before the budget shrinks to the share.
    compared = [pair for pair in pairs if pair[1] == pairs[0][1]]
    share_s = None
    if (auto or auto_batch) and budget_s > 0:
        # The fallback and the run's cost estimate: one image is timed whatever the budget
        # says (on a loaded machine that alone can use it up), a batch only if it fits.
        ready("torch", "fp32")
        among = max(1, len(compared))
        baseline = timed("torch", "fp32", trial, among) or 1 / per_image[("torch", "fp32")]
        if images is not None:
            share_s = PROBE_SHARE * images / baseline
    notes = [_far_slower(precision, engine, device, ready, per_image)]
    failed: list[ConversionError] = []
    if auto:
        (engine, precision), kept = pairs[0], None
        for i, (name, prec) in enumerate(pairs):
            if i == len(compared):
                clock.shrink(share_s)  # the engines are compared: the rest has the share
            try:
                rate = timed(name, prec, trial, max(1, len(compared) - i))
            except ConversionError as exc:
                if explicit_engine:
                    raise
                failed.append(exc)  # not every network converts: say why, time the others
                continue
            if (name, prec) == pairs[0] or faster(rate, kept):
                (engine, precision), kept = (name, prec), rate
    clock.shrink(share_s)
    if auto_batch:
        sizes = [b for b in batches if timed(engine, precision, b) is not None]
        batch_size = max(sizes, key=lambda b: rates[(engine, precision, b)], default=trial)
    fell_back = False
    if may_fall_back and (engine, precision) != ("torch", "fp32"):
        # The winner was chosen at the trial batch and its batch size tuned alone: plain fp32
        # may be faster at that size. Never end slower than exact fp32 measured.
        timed("torch", "fp32", batch_size)
    exact = {b: r for (e, p, b), r in rates.items() if (e, p) == ("torch", "fp32")}
    chosen = rates.get((engine, precision, batch_size))
    if may_fall_back and exact and chosen is not None and chosen < max(exact.values()):
        precision, engine, fell_back = "fp32", "torch", True
        batch_size = max(exact, key=exact.__getitem__) if auto_batch else trial
    measured = {f"{e}-{p}@{b}": round(r, 1) for (e, p, b), r in rates.items()}
    for x in failed:
        notes.append(f"{x.engine} cannot convert {x.model} ({x.reason}), so {engine} ran it")
    if not explicit_engine and budget_s > 0:  # no budget: no probe (the caller says why)
        unfit = {x.engine for x in failed}
        notes.append(
            _passed_over(
                [e for e, p in compared if (e, p, trial) in rates],
                [e for e, p in compared if (e, p, trial) not in rates and e not in unfit],
                engine,
            )
        )
    note = "; ".join(n for n in notes if n)
    record = {
        "budget_s": round(clock.limit_s, 2),
        "spent_s": round(clock.spent(), 6),
        "over_budget": sorted(over_budget),
        "fell_back_to_fp32": fell_back,
    }
    if share_s is not None:
        record["share_s"] = round(share_s, 2)  # PROBE_SHARE of the run, before the ceiling
    return Settings(precision, batch_size, is_conv, engine, measured, note, record)


def _passed_over(timed: list[str], untimed: list[str], chosen: str) -> str:
    """A one-line note naming the engines ``auto`` left untimed (over the budget) beside the
    one it ran, with the flag that runs them: a slow path is never taken in silence."""
    others = [e for e in untimed if e != chosen]
    if not others:
        return ""
    which = f"{', '.join(timed)} only" if timed else "no engine at its trial batch"
    them, one = ("it", "it") if len(others) == 1 else ("them", "one")
    return (
        f"auto timed {which}: {', '.join(others)} over the probe budget, so {chosen} ran "
        f"untested against {them} ({' or '.join(f'--engine {e}' for e in others)} to use {one})"
    )


def _far_slower(
    precision: str,
    engine: str,
    device: torch.device,
    ready: Any,
    per_image: dict[tuple[str, str], float],
) -> str:
    """A one-line warning when an explicitly requested precision is far slower than fp32 (on
    the requested engine, plain torch if that is left open).

    Both are timed on one image whatever the budget (a bf16 forward on a CPU without bf16
    units ran 0.1 img/s, a warning worth two single-image forwards).
    """
    if precision in ("auto", "fp32"):
        return ""
    name = "torch" if engine == "auto" else engine
    ready(name, "fp32")
    ready(name, precision)
    ratio = per_image[(name, precision)] / per_image[(name, "fp32")]
    if ratio <= FAR_SLOWER:
        return ""
    return (
        f"precision {precision} ran {ratio:.1f}x slower than fp32 on this {device.type} "
        "(one image each): fp32 is faster here, and exact"
    )
