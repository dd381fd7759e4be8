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

The probe must never cost more than it can save. It runs under a hard budget: at most
``PROBE_BUDGET_S`` seconds, and at most ``PROBE_SHARE`` of the run it is tuning as estimated
from the first measurement (exact fp32 on plain torch, which is also the fallback). Before each
further candidate it times one single-image forward and starts the candidate only if its
estimated cost fits what is left, so a precision that is 15× slower costs one image, not a
minute. The caller skips the probe altogether for datasets too small to repay it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from featpipe.choices import ENGINES
from featpipe.errors import ArgumentError
from featpipe.runtime.conversions import ConversionError, Conversions
from featpipe.runtime.devices import check_precision
from featpipe.runtime.engines import (
    Engine,
    Normalized,
    OnnxEngine,
    OpenVinoEngine,
    TorchEngine,
    export_onnx,
    export_openvino,
    openvino_has_bf16,
)

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
        calls, start = 0, time.perf_counter()
        while calls < 1 or time.perf_counter() - start < min_seconds / windows:
            engine(x)
            calls += 1
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


def check_engine(device: torch.device, precision: str, engine: str) -> None:
    check_precision(device, precision)
    if engine not in ENGINES:
        raise ArgumentError("engine", f"{engine}: choose one of {', '.join(ENGINES)}")
    if engine == "onnxruntime" and (device.type != "cpu" or precision not in ("auto", "fp32")):
        raise ArgumentError(
            "engine", "onnxruntime runs fp32 on CPU: use device cpu, precision fp32"
        )
    if engine == "openvino" and device.type != "cpu":
        raise ArgumentError("engine", f"openvino runs on CPU, not {device.type}: use device cpu")
    if engine == "openvino" and precision == "bf16" and not openvino_has_bf16():
        raise ArgumentError(
            "precision", "bf16: OpenVINO has no bf16 on this CPU (no AVX512-BF16 or AMX): use fp32"
        )


def candidates(device: torch.device, precision: str, engine: str) -> list[tuple[str, str]]:
    """The (engine, precision) pairs a request leaves open, in order of preference: exact fp32
    before a reduced precision, plain torch before a converted network. OpenVINO comes before
    ONNX Runtime because it measured faster on this project's CPU (issue 25: 361 against 229
    img/s, Lite0 at batch 32), and a probe short of budget should time the likelier winner."""
    precisions = ["fp32", half_precision(device)] if precision == "auto" else [precision]
    engines = [engine] if engine != "auto" else ["torch"]
    if engine == "auto" and device.type == "cpu":
        engines += ["openvino", "onnxruntime"]
    return [(e, p) for p in precisions for e in engines if _computes(e, p)]


def _computes(engine: str, precision: str) -> bool:
    """Whether ``engine`` computes ``precision`` on this machine: ONNX Runtime only fp32,
    OpenVINO fp32 and, on CPUs with bf16 units, bf16."""
    if engine == "onnxruntime":
        return precision == "fp32"
    if engine == "openvino":
        return precision == "fp32" or (precision == "bf16" and openvino_has_bf16())
    return True


def untimed(
    device: torch.device,
    is_conv: bool,
    precision: str = "auto",
    batch_size: int | None = None,
    engine: str = "auto",
) -> Settings:
    """The settings when nothing is timed: exact fp32 on plain torch, unless asked otherwise."""
    check_engine(device, precision, engine)
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

    ``images`` is the size of the run being tuned: the budget shrinks to ``PROBE_SHARE`` of its
    expected duration. Whatever is picked measured at least as fast as exact fp32 on plain
    torch; an explicit precision far slower than fp32 is named in the note.
    """
    check_engine(device, precision, engine)
    clock = _Clock(budget_s)
    engines: dict[tuple[str, str], Engine] = {}
    per_image: dict[tuple[str, str], float] = {}  # seconds of one single-image forward
    rates: dict[tuple[str, str, int], float] = {}
    over_budget: set[str] = set()

    def ready(name: str, prec: str, anyway: bool = False) -> bool:
        """Build a candidate engine and time one image, if the budget still has room."""
        if (name, prec) in engines:
            return True
        # Two single-image forwards of the cheapest engine timed so far: the least a new one costs.
        floor = 2 * min(per_image.values(), default=0.0)
        if clock.left() <= floor and not anyway:
            return False
        settings = {"engine": name, "precision": prec, "channels_last": is_conv}
        engines[(name, prec)] = build_engine(settings, module, device, files)
        per_image[(name, prec)] = 1 / measure(engines[(name, prec)], 1, module.input_size, 0.0)
        return True

    def timed(name: str, prec: str, batch: int) -> float | None:
        """Images/s of one candidate, or None when it does not fit the budget."""
        if (name, prec, batch) in rates:
            return rates[(name, prec, batch)]
        if not ready(name, prec):
            over_budget.add(f"{name}-{prec}@{batch}")
            return None
        window = min(0.6, max(0.0, clock.left()) / 2)
        if 2 * batch * per_image[(name, prec)] + window > clock.left():
            over_budget.add(f"{name}-{prec}@{batch}")
            return None
        rates[(name, prec, batch)] = measure(
            engines[(name, prec)],
            batch,
            module.input_size,
            min_seconds=window,
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
    if (auto or auto_batch) and budget_s > 0:
        # The fallback and the run's cost estimate: one image is timed whatever the budget
        # says (on a loaded machine that alone can use it up), a batch only if it fits.
        ready("torch", "fp32", anyway=True)
        baseline = timed("torch", "fp32", trial) or 1 / per_image[("torch", "fp32")]
        if images is not None:
            clock.limit_s = min(clock.limit_s, max(clock.spent(), PROBE_SHARE * images / baseline))
    notes = [_far_slower(precision, engine, device, ready, per_image)]
    failed: list[ConversionError] = []
    if auto:
        pairs = candidates(device, precision, engine)
        (engine, precision), kept = pairs[0], None
        for name, prec in pairs:
            try:
                rate = timed(name, prec, trial)
            except ConversionError as exc:
                if explicit_engine:
                    raise
                failed.append(exc)  # not every network converts: say why, time the others
                continue
            if (name, prec) == pairs[0] or faster(rate, kept):
                (engine, precision), kept = (name, prec), rate
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
    note = "; ".join(n for n in notes if n)
    record = {
        "budget_s": round(clock.limit_s, 2),
        "spent_s": round(clock.spent(), 6),
        "over_budget": sorted(over_budget),
        "fell_back_to_fp32": fell_back,
    }
    return Settings(precision, batch_size, is_conv, engine, measured, note, record)


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
    ready(name, "fp32", True)
    ready(name, precision, True)
    ratio = per_image[(name, precision)] / per_image[(name, "fp32")]
    if ratio <= FAR_SLOWER:
        return ""
    return (
        f"precision {precision} ran {ratio:.1f}x slower than fp32 on this {device.type} "
        "(one image each): fp32 is faster here, and exact"
    )
