"""Engines agree with each other; the probe times candidates and records what it chose."""

from __future__ import annotations

import ctypes
import gc
from pathlib import Path
from types import SimpleNamespace
from typing import ClassVar

import numpy as np
import pytest
import torch

from featpipe.backbones.build import BackboneSpec, build_backbone
from featpipe.errors import ArgumentError, FeatpipeError
from featpipe.runtime import openvino_engine, tuning
from featpipe.runtime.conversions import ConversionError, Conversions
from featpipe.runtime.engines import (
    Normalized,
    OneBatchAtATime,
    OnnxEngine,
    TorchEngine,
    export_onnx,
)
from featpipe.runtime.tuning import CPU_BATCHES, build_engine, probe


@pytest.fixture(scope="module")
def lite0() -> Normalized:
    backbone = build_backbone(BackboneSpec("tf_efficientnet_lite0", weights="offline"))
    return Normalized(backbone.module, backbone.data_config)


def test_onnxruntime_matches_torch_on_real_weights(lite0: Normalized, tmp_path: Path) -> None:
    images = torch.randint(0, 256, (3, 3, 224, 224), dtype=torch.uint8)
    eager = TorchEngine(lite0, torch.device("cpu"), "fp32", channels_last=True)(images)
    path = export_onnx(lite0, Conversions.under(tmp_path, "lite0", "lite0"))
    onnx = OnnxEngine(path, threads=2, spin=False)(images)
    assert onnx.shape == eager.shape == (3, 1280)
    np.testing.assert_allclose(onnx, eager, rtol=1e-4, atol=1e-4)


def tiny() -> Normalized:
    backbone = build_backbone(BackboneSpec("test_efficientnet", weights="none", image_size=32))
    return Normalized(backbone.module, backbone.data_config)


def test_probe_records_every_candidate_and_picks_the_fastest(tmp_path: Path) -> None:
    files = Conversions.under(tmp_path, "test_efficientnet", "m")
    # A generous budget: this test checks the bookkeeping, not the budget.
    chosen = probe(tiny(), torch.device("cpu"), True, files, budget_s=60.0)
    assert chosen.precision in ("fp32", "bf16")
    assert chosen.engine in ("torch", "onnxruntime", "openvino")
    assert chosen.batch_size in CPU_BATCHES
    timed = {"torch-fp32@8", "torch-bf16@8", "openvino-fp32@8", "onnxruntime-fp32@8"}
    assert timed <= set(chosen.measured)
    rates = {k: v for k, v in chosen.measured.items() if k.startswith(chosen.engine)}
    mine = f"{chosen.engine}-{chosen.precision}@{chosen.batch_size}"
    assert chosen.measured[mine] == max(
        v for k, v in rates.items() if k.startswith(f"{chosen.engine}-{chosen.precision}@")
    )


def test_explicit_settings_skip_the_probe(tmp_path: Path) -> None:
    module, files = tiny(), Conversions.under(tmp_path, "test_efficientnet", "m")
    chosen = probe(module, torch.device("cpu"), True, files, "fp32", 4, "torch")
    assert (chosen.engine, chosen.precision, chosen.batch_size, chosen.measured) == (
        "torch",
        "fp32",
        4,
        {},
    )
    with pytest.raises(FeatpipeError, match="engine onnxruntime runs fp32 on CPU"):
        probe(module, torch.device("cpu"), True, files, "bf16", 4, "onnxruntime")


class SleepEngine(OneBatchAtATime):
    """A stand-in engine whose cost is a known function of the batch: ``overhead + batch * per``.

    The probe's decisions depend only on timings. A call advances a virtual clock (the one the
    probe reads, through :func:`virtual_clock`) by its cost instead of sleeping, so these tests
    are exact and instant, and no scheduling delay of a loaded machine can change a decision.
    """

    name = "fake"
    # every call's cost, across engines: what the probe spent
    slept: ClassVar[list[float]] = []
    now: ClassVar[float] = 0.0  # the virtual clock, in seconds
    built: ClassVar[list[str]] = []  # the engines fake_probe built, in order

    def __init__(self, overhead: float, per_image: float) -> None:
        self.overhead, self.per_image = overhead, per_image

    def __call__(self, images: torch.Tensor) -> np.ndarray:
        cost = self.overhead + len(images) * self.per_image
        SleepEngine.slept.append(cost)
        SleepEngine.now += cost
        return np.zeros((len(images), 4), np.float32)


def virtual_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """The probe reads :class:`SleepEngine`'s clock, which only its calls advance."""
    monkeypatch.setattr(tuning, "time", SimpleNamespace(perf_counter=lambda: SleepEngine.now))
    monkeypatch.setattr(SleepEngine, "slept", [])
    monkeypatch.setattr(SleepEngine, "now", 0.0)
    monkeypatch.setattr(SleepEngine, "built", [])


def fake_probe(
    monkeypatch: pytest.MonkeyPatch,
    costs: dict[tuple[str, str], tuple[float, float]],
    builds: dict[str, float] | None = None,
    is_conv: bool = True,
    **kwargs,
) -> tuning.Settings:
    """A probe over :class:`SleepEngine` candidates; ``builds``: seconds an engine's build
    advances the virtual clock (a compile, a session), none by default; ``is_conv``: whether
    the network probed is a convnet."""

    def build(settings, module, device, onnx_path):
        SleepEngine.now += (builds or {}).get(settings["engine"], 0.0)
        SleepEngine.built.append(settings["engine"])
        return SleepEngine(*costs[(settings["engine"], settings["precision"])])

    monkeypatch.setattr(tuning, "build_engine", build)

    virtual_clock(monkeypatch)
    module = SimpleNamespace(input_size=(8, 8))
    files = Conversions.under(Path("unused"), "tiny", "tiny")
    return probe(module, torch.device("cpu"), is_conv, files, **kwargs)


def test_openvino_matches_torch_takes_any_batch_and_converts_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import openvino

    conversions: list[object] = []
    convert = openvino.convert_model
    monkeypatch.setattr(
        openvino, "convert_model", lambda *a, **k: conversions.append(a) or convert(*a, **k)
    )
    configs: list[dict] = []
    compile_model = openvino.Core.compile_model
    monkeypatch.setattr(
        openvino.Core,
        "compile_model",
        lambda core, model, device, config: (
            configs.append(config) or compile_model(core, model, device, config)
        ),
    )
    module, files = tiny(), Conversions.under(tmp_path, "test_efficientnet", "m")
    images = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    eager = TorchEngine(module, torch.device("cpu"), "fp32", channels_last=False)(images)
    settings = {"engine": "openvino", "precision": "fp32", "channels_last": False}
    engine = build_engine(settings, module, torch.device("cpu"), files)
    ir = files.openvino / openvino_engine.IR_NAME
    made = ir.stat().st_mtime_ns
    # A batch of 5, then a last batch of 2 on the same compiled model: the batch axis is dynamic.
    np.testing.assert_allclose(engine(images), eager, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(engine(images[:2]), eager[:2], rtol=1e-4, atol=1e-5)
    again = build_engine(settings, module, torch.device("cpu"), files)  # as a rerun builds it
    np.testing.assert_allclose(again(images[:1]), eager[:1], rtol=1e-4, atol=1e-5)
    assert len(conversions) == 1 and ir.stat().st_mtime_ns == made
    # OpenVINO's default on a CPU with bf16 units is bf16: exact fp32 is asked for, every time.
    assert [c["INFERENCE_PRECISION_HINT"] for c in configs] == ["f32", "f32"]
    assert any((files.openvino / "compiled").iterdir())  # OpenVINO's own compiled blob
    # Once released, the engines leave this thread's signal stack where
    # signals can be delivered (see openvino_engine.openvino_core: else the next SIGCHLD is a
    # SIGSEGV).
    del engine, again
    gc.collect()
    assert signal_stack_is_mapped()


def test_openvino_streams_give_every_batch_its_own_rows_in_order_bit_for_bit(
    tmp_path: Path,
) -> None:
    module, files = tiny(), Conversions.under(tmp_path, "test_efficientnet", "m")
    openvino_engine.export_openvino(module, files)
    engine = openvino_engine.OpenVinoEngine(files, "fp32", threads=2)
    assert len(engine.requests) >= 2  # THROUGHPUT: a stream, and a request, per thread
    g = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
               for n in (5, 3, 1, 4, 2)]  # fmt: skip
    alone = [np.concatenate([engine(b[i : i + 1]) for i in range(len(b))]) for b in batches]
    # Items without images (a batch whose files all failed) keep their place.
    items = [(0, batches[0]), (1, None), (2, batches[1]), (3, batches[2]), (4, None)]
    items += [(5, batches[3]), (6, batches[4])]
    out = list(engine.map(iter(items)))
    assert [tag for tag, _ in out] == list(range(7))
    assert out[1][1] is None and out[4][1] is None
    computed = [rows for _, rows in out if rows is not None]
    for rows, split, one_by_one in zip(computed, map(engine, batches), alone, strict=True):
        assert np.array_equal(rows, split) and np.array_equal(rows, one_by_one)
    # A consumer that stops early leaves no request busy: the next map runs on the same ones.
    stopped = engine.map(iter(items))
    next(stopped), next(stopped)
    stopped.close()
    ((_, again),) = engine.map(items[:1])
    assert np.array_equal(again, out[0][1])


def signal_stack_is_mapped() -> bool:
    """Whether this thread's alternate signal stack (``sigaltstack``) lies in mapped memory."""

    class Stack(ctypes.Structure):
        _fields_ = [("sp", ctypes.c_void_p), ("flags", ctypes.c_int), ("size", ctypes.c_size_t)]

    stack = Stack()
    assert ctypes.CDLL(None).sigaltstack(None, ctypes.byref(stack)) == 0
    if not stack.sp:
        return True  # no alternate stack: signals go to the thread's own stack
    with open("/proc/self/maps") as maps:
        spans = [line.split()[0].split("-") for line in maps]
    return any(int(a, 16) <= stack.sp < int(b, 16) for a, b in spans)


def test_ranks_converting_at_once_leave_one_whole_ir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = Conversions.under(tmp_path, "m", "m")

    def write(module, example, path: Path) -> None:  # a rival rank renames its IR in first
        path.write_text("ours")
        path.with_suffix(".bin").write_text("ours")
        files.openvino.mkdir(parents=True)
        (files.openvino / openvino_engine.IR_NAME).write_text("theirs")
        (files.openvino / openvino_engine.IR_NAME).with_suffix(".bin").write_text("theirs")

    monkeypatch.setattr(openvino_engine, "write_openvino", write)
    ir = openvino_engine.export_openvino(tiny(), files)
    assert [p.read_text() for p in (ir, ir.with_suffix(".bin"))] == ["theirs", "theirs"]
    assert [p.name for p in tmp_path.glob(".openvino/*")] == ["m"]  # no temporary left


class Histogram(torch.nn.Module):
    """A network OpenVINO has no conversion rule for (``aten::histc``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([torch.histc(image, bins=4) for image in x])


def test_a_network_openvino_cannot_convert_is_refused_in_one_line_naming_it(
    tmp_path: Path,
) -> None:
    config = {"mean": (0.5,) * 3, "std": (0.5,) * 3, "input_size": (3, 8, 8)}
    module = Normalized(Histogram(), config)
    files = Conversions.under(tmp_path, "histogram_net", "h")
    settings = {"engine": "openvino", "precision": "fp32", "channels_last": False}
    with pytest.raises(ConversionError) as caught:
        build_engine(settings, module, torch.device("cpu"), files)
    message = str(caught.value)
    assert len(message.splitlines()) == 1 and caught.value.param == "engine"
    assert message.startswith("engine openvino cannot convert histogram_net (")
    assert "aten::histc" in message and message.endswith("use engine torch")
    assert not files.openvino.exists() and list(tmp_path.glob(".openvino/*")) == []


@pytest.mark.parametrize(
    ("capabilities", "has_bf16"),
    [
        (["FP32", "INT8", "BIN", "EXPORT_IMPORT"], False),  # this machine's EPYC: no AVX512-BF16
        (["FP32", "BF16", "INT8", "BIN", "EXPORT_IMPORT"], True),  # AVX512-BF16 or AMX
    ],
)
def test_bf16_units_are_read_from_openvinos_cpu_capabilities(
    monkeypatch: pytest.MonkeyPatch, capabilities: list[str], has_bf16: bool
) -> None:
    asked = []

    class Core:
        def get_property(self, device: str, name: str) -> list[str]:
            asked.append((device, name))
            return capabilities

    monkeypatch.setattr(openvino_engine, "openvino_core", Core)
    assert openvino_engine.openvino_has_bf16() is has_bf16
    assert asked == [("CPU", "OPTIMIZATION_CAPABILITIES")]


def test_openvino_bf16_is_refused_on_a_cpu_without_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Without bf16 units OpenVINO would quietly compute fp32 under a bf16 hint.
    monkeypatch.setattr(tuning, "openvino_has_bf16", lambda: False)
    cpu, files = torch.device("cpu"), Conversions.under(tmp_path, "t", "t")
    with pytest.raises(ArgumentError) as untimed:
        tuning.untimed(cpu, True, "bf16", 4, "openvino")
    with pytest.raises(ArgumentError) as probed:
        probe(tiny(), cpu, True, files, "bf16", 4, "openvino")
    for caught in (untimed, probed):
        assert caught.value.param == "precision" and "no bf16 on this CPU" in str(caught.value)
    with pytest.raises(ArgumentError, match="openvino runs on CPU, not cuda"):
        tuning.check_engine(torch.device("cuda"), "fp32", "openvino", is_conv=True)


def test_probe_stops_at_its_budget_when_a_candidate_is_far_slower(monkeypatch) -> None:
    costs = {("torch", "fp32"): (0.0, 0.001), ("torch", "bf16"): (0.0, 0.3)}
    chosen = fake_probe(monkeypatch, costs, engine="torch", batch_size=8, budget_s=1.0)
    # bf16 costs 2.4 s a batch of 8: single images of it are all the budget allows.
    assert max(SleepEngine.slept) == pytest.approx(0.3)  # never a batch of bf16
    assert sum(SleepEngine.slept) < 1.0 + 2 * 0.3
    assert chosen.precision == "fp32" and "torch-bf16@8" in chosen.probe["over_budget"]
    assert chosen.probe["budget_s"] == 1.0
    assert chosen.probe["spent_s"] == pytest.approx(sum(SleepEngine.slept), abs=1e-6)


def test_probe_budget_is_a_small_share_of_the_run_it_tunes(monkeypatch) -> None:
    costs = {("torch", "fp32"): (0.0, 0.001), ("torch", "bf16"): (0.0, 0.0001)}
    # 50 images at ~1000 img/s is a 0.05 s run: after the fp32 baseline nothing else pays.
    chosen = fake_probe(monkeypatch, costs, engine="torch", images=50)
    assert (chosen.precision, chosen.batch_size) == ("fp32", 8)
    assert list(chosen.measured) == ["torch-fp32@8"]
    assert chosen.probe["budget_s"] <= chosen.probe["spent_s"] + 0.01


def test_probe_never_keeps_a_path_slower_than_fp32_at_its_batch(monkeypatch) -> None:
    # bf16 wins at the trial batch (8: 400 vs 286 img/s) and prefers batch 32 (470 img/s), where
    # fp32 runs 615 img/s: the probe must end on fp32, not on the faster-looking bf16.
    costs = {("torch", "fp32"): (0.020, 0.001), ("torch", "bf16"): (0.004, 0.002)}
    chosen = fake_probe(monkeypatch, costs, engine="torch", budget_s=30.0)
    assert chosen.measured["torch-bf16@8"] > chosen.measured["torch-fp32@8"]
    assert (chosen.precision, chosen.engine, chosen.batch_size) == ("fp32", "torch", 32)
    assert chosen.probe["fell_back_to_fp32"]


def test_explicit_precision_far_slower_than_fp32_is_named(monkeypatch) -> None:
    costs = {("torch", "fp32"): (0.0, 0.002), ("torch", "bf16"): (0.0, 0.03)}
    chosen = fake_probe(
        monkeypatch, costs, precision="bf16", engine="torch", batch_size=4, budget_s=0.0
    )
    assert chosen.precision == "bf16"  # asked for: kept, but never silently
    assert "slower than fp32" in chosen.note and "bf16" in chosen.note
    fine = fake_probe(  # equal costs: nothing to name
        monkeypatch,
        {("torch", "fp32"): (0.0, 0.002), ("torch", "bf16"): (0.0, 0.002)},
        precision="bf16",
        engine="torch",
        batch_size=4,
        budget_s=0.0,
    )
    assert fine.note == ""


def test_probe_on_a_machine_too_slow_for_a_batch_times_one_image_and_stops(monkeypatch) -> None:
    costs = {("torch", "fp32"): (0.0, 0.4), ("torch", "bf16"): (0.0, 0.4)}
    chosen = fake_probe(monkeypatch, costs, budget_s=1.0)
    # Two single-image forwards (warm-up and timed) use the budget up; a batch of 8 (3.2 s a
    # call, warm-up and windows) never starts.
    assert SleepEngine.slept == pytest.approx([0.4, 0.4])
    assert (chosen.precision, chosen.engine, chosen.batch_size) == ("fp32", "torch", 8)
    assert chosen.measured == {} and "torch-fp32@8" in chosen.probe["over_budget"]


# One forward of 8 images: torch fp32 32 ms, OpenVINO fp32 16 ms, ONNX Runtime 24 ms, torch
# bf16 20 ms; OpenVINO bf16 8 ms, or 16 ms (a tie goes to exact fp32).
CPU_COSTS = {
    ("torch", "fp32"): (0.0, 0.004),
    ("openvino", "fp32"): (0.0, 0.002),
    ("onnxruntime", "fp32"): (0.0, 0.003),
    ("torch", "bf16"): (0.0, 0.0025),
}


@pytest.mark.parametrize(
    ("bf16_units", "openvino_bf16", "expected"),
    [
        (True, 0.001, ("openvino", "bf16")),
        (True, 0.002, ("openvino", "fp32")),
        (False, 0.001, ("openvino", "fp32")),
    ],
)
def test_auto_picks_a_reduced_precision_only_by_measurement_and_records_it(
    monkeypatch: pytest.MonkeyPatch, bf16_units: bool, openvino_bf16: float, expected: tuple
) -> None:
    monkeypatch.setattr(tuning, "openvino_has_bf16", lambda: bf16_units)
    costs = CPU_COSTS | {("openvino", "bf16"): (0.0, openvino_bf16)}
    chosen = fake_probe(monkeypatch, costs, batch_size=8, budget_s=10.0)
    assert (chosen.engine, chosen.precision) == expected
    every = {f"{e}-{p}@8" for e, p in CPU_COSTS} | ({"openvino-bf16@8"} if bf16_units else set())
    assert set(chosen.measured) == every  # each candidate timed and recorded, the winner too
    assert chosen.as_dict()["precision"] == expected[1]  # what the key and summary line take
    assert not chosen.probe["fell_back_to_fp32"] and chosen.note == ""


def test_openvino_bf16_is_never_built_for_a_transformer(monkeypatch: pytest.MonkeyPatch) -> None:
    # It crashed the process on ViT-Tiny (tuning.openvino_bf16_refusal): here it is the fastest
    # candidate, picked for a convnet, and still neither built nor timed for a transformer.
    monkeypatch.setattr(tuning, "openvino_has_bf16", lambda: True)
    costs = CPU_COSTS | {("openvino", "bf16"): (0.0, 0.0001)}
    conv = fake_probe(monkeypatch, costs, batch_size=8, budget_s=10.0)
    assert (conv.engine, conv.precision) == ("openvino", "bf16")
    vit = fake_probe(monkeypatch, costs, batch_size=8, budget_s=10.0, is_conv=False)
    assert not any(m.startswith("openvino-bf16") for m in vit.measured)
    assert (vit.engine, vit.precision) == ("openvino", "fp32")  # the fastest left
    cpu = torch.device("cpu")
    assert ("openvino", "bf16") not in tuning.candidates(cpu, "auto", "auto", is_conv=False)
    with pytest.raises(ArgumentError) as refused:
        tuning.untimed(cpu, False, "bf16", 4, "openvino")
    assert refused.value.param == "precision" and "segfault" in str(refused.value)
    tuning.check_engine(cpu, "bf16", "openvino", is_conv=True)  # a convnet may ask for it


def test_auto_passes_over_a_network_openvino_cannot_convert_and_says_so(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    costs = CPU_COSTS

    def build(settings, module, device, files):
        if settings["engine"] == "openvino":
            raise ConversionError("openvino", files.model, "No conversion rule for aten::histc")
        return SleepEngine(*costs[(settings["engine"], settings["precision"])])

    monkeypatch.setattr(tuning, "openvino_has_bf16", lambda: True)
    monkeypatch.setattr(tuning, "build_engine", build)
    virtual_clock(monkeypatch)
    module, files = SimpleNamespace(input_size=(8, 8)), Conversions.under(Path("u"), "tiny", "t")
    chosen = probe(module, torch.device("cpu"), True, files, "fp32", 8, budget_s=10.0)
    assert chosen.engine == "onnxruntime" and "openvino-fp32@8" not in chosen.measured
    assert chosen.note == (
        "openvino cannot convert tiny (No conversion rule for aten::histc), so onnxruntime ran it"
    )
    with pytest.raises(ConversionError):  # asked for by name: refused, not replaced
        probe(module, torch.device("cpu"), True, files, "auto", 8, "openvino", budget_s=10.0)


# What the probe met on this project's 2-core CPU (EfficientNet-Lite0, 224 px, 2026-12-06): torch
# fp32 timed 96 img/s at batch 8; OpenVINO fp32 runs 130.5 img/s and ONNX Runtime 101.5
# (forward only); a CPU without bf16 units runs torch bf16 ~15x slower than fp32. Builds: torch
# moves the module, OpenVINO compiles from its IR and blob, ONNX Runtime opens a session.
LITE0 = {
    ("torch", "fp32"): (0.0, 1 / 96),
    ("openvino", "fp32"): (0.0, 1 / 130.5),
    ("onnxruntime", "fp32"): (0.0, 1 / 101.5),
    ("torch", "bf16"): (0.0, 15 / 96),
}
LITE0_BUILDS = {"torch": 0.6, "openvino": 0.8, "onnxruntime": 0.6}


def test_a_probe_whose_share_is_too_small_still_compares_every_cpu_engine(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(tuning, "openvino_has_bf16", lambda: False)
    # 3,000 images at 96 img/s: the run's 5% share is 1.56 s, about what torch's baseline costs.
    chosen = fake_probe(monkeypatch, LITE0, LITE0_BUILDS, images=3000)
    assert chosen.probe["share_s"] == 1.56
    assert {"openvino-fp32@8", "onnxruntime-fp32@8"} <= set(chosen.measured)
    assert (chosen.engine, chosen.precision, chosen.batch_size) == ("openvino", "fp32", 8)
    assert chosen.note == "" and not chosen.probe["fell_back_to_fp32"]
    # The comparison overran the share but not the ceiling; nothing else was paid for.
    spent, budget = chosen.probe["spent_s"], chosen.probe["budget_s"]
    assert chosen.probe["share_s"] < budget <= tuning.PROBE_BUDGET_S
    assert spent == pytest.approx(SleepEngine.now) and spent <= budget + 0.01
    assert "torch-bf16@8" in chosen.probe["over_budget"]
    assert SleepEngine.built == ["torch", "openvino", "onnxruntime"]  # torch bf16 never built


def test_an_engine_left_untimed_is_named_with_the_flag_that_runs_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # First conversions (an OpenVINO IR, an ONNX export) make the builds dear: OpenVINO's 2 s (as
    # in the memo of the run that kept torch) leaves ONNX Runtime too little.
    monkeypatch.setattr(tuning, "openvino_has_bf16", lambda: False)
    builds = LITE0_BUILDS | {"openvino": 2.0, "onnxruntime": 1.5}
    chosen = fake_probe(monkeypatch, LITE0, builds, images=3000)
    assert (chosen.engine, chosen.precision) == ("openvino", "fp32")
    assert "onnxruntime-fp32@8" in chosen.probe["over_budget"]
    assert chosen.note == (
        "auto timed torch, openvino only: onnxruntime over the probe budget, so openvino ran "
        "untested against it (--engine onnxruntime to use it)"
    )


def test_on_a_tight_budget_the_compared_engines_share_it(monkeypatch: pytest.MonkeyPatch) -> None:
    # 2 s: torch's baseline times a short window, so OpenVINO's build and batch still fit.
    monkeypatch.setattr(tuning, "openvino_has_bf16", lambda: False)
    chosen = fake_probe(monkeypatch, LITE0, LITE0_BUILDS, images=3000, budget_s=2.0)
    assert (chosen.engine, chosen.precision) == ("openvino", "fp32")
    assert set(chosen.measured) == {"torch-fp32@8", "openvino-fp32@8"}
    assert SleepEngine.built == ["torch", "openvino"]  # ONNX Runtime's batch cannot fit: unbuilt
    assert "onnxruntime over the probe budget" in chosen.note


def test_engines_the_budget_cannot_time_are_named_and_never_built(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(tuning, "openvino_has_bf16", lambda: False)
    chosen = fake_probe(monkeypatch, LITE0, LITE0_BUILDS, images=3000, budget_s=1.5)
    assert (chosen.engine, chosen.precision) == ("torch", "fp32")
    assert list(chosen.measured) == ["torch-fp32@8"]
    # OpenVINO was built and found too dear for a batch; ONNX Runtime, then, not even built.
    assert SleepEngine.built == ["torch", "openvino"]
    assert chosen.note == (
        "auto timed torch only: openvino, onnxruntime over the probe budget, so torch ran "
        "untested against them (--engine openvino or --engine onnxruntime to use one)"
    )
    # Asked for torch by name: no engine was passed over, nothing to name.
    assert fake_probe(monkeypatch, LITE0, engine="torch", budget_s=0.01).note == ""
