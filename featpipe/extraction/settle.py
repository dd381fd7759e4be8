"""Settling an extract request: everything that decides its cache key and its speed settings.

Settling goes from cheap to dear, so that a cache hit stops early:

1. the arguments are checked before anything else and without torch, when the
   :class:`~featpipe.extraction.options.ExtractOptions` are made;
2. :func:`cached` looks the request up in the memos of the cache directory
   (:func:`~featpipe.cache.catalog.recall`): a request settled before, or one whose network is
   known and whose precision needs no probe, finds its entry without building the model;
3. otherwise :func:`resolve` settles the key: it builds the model only when something must be
   measured or the network is not memoised yet, and probes speed (:mod:`featpipe.runtime.tuning`)
   for a dataset large enough to be worth it; what it learns is memoised for the next call;
4. a request whose memo names OpenVINO, whose IR is on disk and whose eval transform
   :class:`~featpipe.data.eval_pixels.EvalPixels` computes runs without torch at all
   (:func:`runs_without_torch`, :func:`settled_without_torch`): numpy batches into the compiled
   IR, with the same pixels and the same network as the torch path.

The result is an :class:`ExtractRun`, which :func:`featpipe.extraction.fill.fill` runs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from featpipe.backbones.spec import BackboneSpec
from featpipe.backbones.weights import WeightsChoice
from featpipe.cache.catalog import Request, entry_path, recall, remember
from featpipe.cache.entry import matches
from featpipe.cache.key import KeyFields
from featpipe.data.datasets import Dataset, Item
from featpipe.data.eval_pixels import EvalPixels
from featpipe.extraction.options import ExtractOptions
from featpipe.progress import Phase
from featpipe.runtime import distributed
from featpipe.runtime.conversions import Conversions
from featpipe.runtime.openvino_engine import IR_NAME
from featpipe.runtime.workers import default_workers

if TYPE_CHECKING:
    from featpipe.backbones.build import Backbone

# A dataset of at most this many images is not worth a speed probe: exact fp32 on plain torch at
# the default batch. The probe's floor is the fp32 baseline's two single-image forwards (for
# Lite0 on 2 cores: 8.7 s at load 13, where the whole run went at 1.6 img/s); beyond that it
# compares the engines at one batch (up to its 5 s ceiling, paid once per model and machine: the
# answer is memoised) and may spend 5% of the run on the rest. Below 256 images the floor alone
# is a sizeable share of the run, and a run that small gains little from the comparison.
PROBE_MIN_IMAGES = 256


@dataclass
class ExtractRun:
    """The settled state of one extract call (or of its views): what
    :func:`~featpipe.extraction.fill.fill` runs with."""

    dataset: Dataset
    fields: KeyFields
    settings: dict[str, Any]
    entry: Path
    device: Any
    backbone: Backbone | None
    timings: dict[str, float]
    options: ExtractOptions
    # pending items → (loader sources, picklable source → uint8 image); None: the eval view
    images: Callable[[list[Item]], tuple[list[str], Callable[[str], Any]]] | None = None
    without_torch: bool = False  # numpy and OpenVINO only: no device, no backbone


def cached(
    cache_dir: Path, request: Request, dataset: Dataset, verify_content: bool
) -> tuple[Path, dict[str, Any]] | None:
    """The entry and settings of a request whose entry already describes this scan (a cache
    hit), if there is one: from the memos alone, without torch."""
    memo = recall(cache_dir, request) or _network_memo(cache_dir, request, len(dataset))
    if memo is None:
        return None
    fields, settings = memo
    entry = entry_path(cache_dir, dataset.name, request.spec.slug, fields.digest)
    if matches(entry, dataset, verify_content) is None:
        return None
    return entry, settings


def network_request(request: Request) -> Request:
    """The request reduced to what the key's network part (weights identity, transform) depends
    on. Its memo answers an explicit precision without building the model: ``--precision fp32
    --engine torch`` over an entry made by ``auto`` is a cache hit, not a model build."""
    return replace(request, precision="", engine="", batch_size=0, device="")


def _untimed_compute(request: Request, n_images: int) -> tuple[str, str] | None:
    """The key's precision and engine when no probe decides them: as requested, or exact fp32
    on torch for a dataset too small to probe; None when the probe decides."""
    small = n_images <= PROBE_MIN_IMAGES
    precision = request.precision if request.precision != "auto" else "fp32" if small else None
    if precision is None:
        return None
    if request.engine != "auto":
        return precision, request.engine
    # An fp32 key names no engine: only a reduced precision waits for the probe's engine.
    return (precision, "torch") if small or precision == "fp32" else None


def _network_memo(
    cache_dir: Path, request: Request, n_images: int
) -> tuple[KeyFields, dict[str, Any]] | None:
    """Key fields and settings of a request that needs no probe to settle its key."""
    untimed = _untimed_compute(request, n_images)
    network = recall(cache_dir, network_request(request))
    if untimed is None or network is None:
        return None
    fields, settings = network
    return fields.computed(*untimed), settings | {"precision": untimed[0]}


def leader_then_all(
    dist: distributed.Dist | None, resolve: Callable[[Any], ExtractRun], memo: Callable[[], Any]
) -> ExtractRun:
    """Rank 0 resolves (builds, probes, memoises); then the others read its memo."""
    if dist is None:
        return resolve(memo())
    runs: list[ExtractRun | None] = [None]
    for turn in (True, False):  # first the leader, then everyone else; all ranks settle twice
        error = None
        if dist.leader == turn:
            try:
                runs[0] = resolve(memo())
            except Exception as exc:
                error = exc
        distributed.settle(error)
    assert runs[0] is not None
    return runs[0]


def runs_without_torch(
    memo: tuple[KeyFields, dict[str, Any]], request: Request, options: ExtractOptions, n: int
) -> bool:
    """Whether a settled request of ``n`` images can run without loading torch, timm and
    torchvision (2.4 s of a warm run's start on a 2-core Xeon).

    It can when its memo names OpenVINO on the CPU (the engine needs only its IR, written by an
    earlier run), its pixels are PIL's and :class:`~featpipe.data.eval_pixels.EvalPixels`
    computes its eval transform, and the loop decodes in this process (no loader workers: the
    default on 2 cores). Anything else (another engine, ``--device cuda``, tensor decoding,
    loader workers) runs as before, with the same numbers.
    """
    fields, settings = memo
    workers = options.workers
    if workers is None:
        workers = default_workers(n, int(settings["batch_size"]))
    return (
        settings.get("engine") == "openvino"
        and request.device in ("auto", "cpu")
        and "decode" not in fields.transform
        and EvalPixels.covers(settings["data_config"])
        and workers == 0
        and (conversions(options.cache_dir, fields).openvino / IR_NAME).is_file()
    )


def settled_without_torch(
    dataset: Dataset,
    request: Request,
    memo: tuple[KeyFields, dict[str, Any]],
    options: ExtractOptions,
) -> ExtractRun:
    """The run of a request that :func:`runs_without_torch`: its memo, nothing else."""
    fields, settings = memo
    entry = entry_path(options.cache_dir, dataset.name, request.spec.slug, fields.digest)
    return ExtractRun(dataset, fields, settings, entry, None, None, {}, options, without_torch=True)


def resolve(
    dataset: Dataset,
    request: Request,
    choice: WeightsChoice,
    memo: tuple[KeyFields, dict[str, Any]] | None,
    options: ExtractOptions,
    say: Callable[[Phase], None],
) -> ExtractRun:
    """Key fields and speed settings: from the memo, or by building and probing the model."""
    from featpipe.runtime import devices  # torch: a cache hit never resolves a device

    device = devices.resolve_device(request.device)
    devices.check_precision(device, request.precision)
    timings: dict[str, float] = {}
    backbone = None
    cache_dir = options.cache_dir
    if memo is None:
        memo, backbone = _settle(dataset, request, choice, cache_dir, device, timings, say)
    fields, settings = memo
    entry = entry_path(cache_dir, dataset.name, request.spec.slug, fields.digest)
    return ExtractRun(dataset, fields, settings, entry, device, backbone, timings, options)


def _settle(
    dataset: Dataset,
    request: Request,
    choice: WeightsChoice,
    cache_dir: Path,
    device: Any,
    timings: dict[str, float],
    say: Callable[[Phase], None],
) -> tuple[tuple[KeyFields, dict[str, Any]], Backbone | None]:
    """Key fields and settings of a request new to this machine, and the model if it was built.

    The model is built only when something must be measured or the network is not memoised
    yet. The probe runs for datasets above ``PROBE_MIN_IMAGES`` with a setting left to choose,
    under its budget; its answer is memoised per request, and so are the settings of a request
    that gives every one (a small dataset's untimed fp32 must not stop a large one from being
    probed). An explicit reduced precision is timed against fp32 on one image each, for the
    warning.
    """
    from featpipe.data import tensor_decode, transforms  # torch: a cache hit never settles
    from featpipe.runtime import tuning  # torch: likewise
    from featpipe.runtime.engines import Normalized  # torch: likewise

    n = len(dataset)
    choose = "auto" in (request.precision, request.engine) or request.batch_size is None
    timed = choose and n > PROBE_MIN_IMAGES
    check_speed = request.precision not in ("auto", "fp32")
    network = recall(cache_dir, network_request(request))
    backbone = None
    if network is None or timed or check_speed:
        spec = request.spec
        backbone = build(spec, choice, timings, say)
        base = KeyFields(
            model=spec.model,
            weights=backbone.weights_identity,
            transform=transforms.fingerprint(backbone.data_config, spec.draft)
            | tensor_decode.fingerprint(spec.decode),
            pool=spec.pool,
            layer=spec.layer,
            precision="fp32",
            dtype=request.dtype,
        )
        described = {
            "dim": backbone.num_features,
            "data_config": backbone.data_config,
            "weights": backbone.weights.describe(),
            "jpeg_draft": spec.draft,
            "decode": spec.decode,
            "is_conv": backbone.is_conv,
        }
        if spec.layer is not None:  # how a pass over several layers splits into feature sets
            described["layer_dims"] = list(backbone.layer_dims)
        remember(cache_dir, network_request(request), base, described)
    else:
        base, described = network
    if backbone is not None and (timed or check_speed):
        budget = tuning.PROBE_BUDGET_S if timed else 0.0
        say(
            Phase("probing", f"probing speed (at most {budget:.0f} s)")
            if timed
            else Phase("probing", f"timing {request.precision} against fp32 on one image")
        )
        t0 = time.perf_counter()
        chosen = tuning.probe(
            Normalized(backbone.module, backbone.data_config),
            device,
            backbone.is_conv,
            conversions(cache_dir, base),
            request.precision,
            request.batch_size,
            request.engine,
            images=n,
            budget_s=budget,
        )
        timings["probe_s"] = time.perf_counter() - t0
        if chosen.note:
            say(Phase("warning", chosen.note))
    else:
        chosen = tuning.untimed(
            device, described["is_conv"], request.precision, request.batch_size, request.engine
        )
    if not timed:
        why = f"{n} images <= {PROBE_MIN_IMAGES}" if choose else "every setting given"
        chosen.probe = chosen.probe | {"skipped": why}
    fields = base.computed(chosen.precision, chosen.engine)
    settings = chosen.as_dict() | described
    # A probe's answer, or every setting given (then nothing depends on the dataset's size);
    # an explicit reduced precision is timed again each run, for its warning.
    if timed or not (choose or check_speed):
        remember(cache_dir, request, fields, settings)
    return (fields, settings), backbone


def build(
    spec: BackboneSpec,
    choice: WeightsChoice,
    timings: dict[str, float],
    say: Callable[[Phase], None],
) -> Backbone:
    """The model, timed: its build is part of the run's record."""
    from featpipe.backbones.build import build_backbone  # torch: a cache hit never builds

    say(Phase("building", f"building {spec.label}"))
    t0 = time.perf_counter()
    backbone = build_backbone(spec, choice)
    timings["model_s"] = time.perf_counter() - t0
    return backbone


def conversions(cache_dir: Path, fields: KeyFields) -> Conversions:
    """One ONNX export and one OpenVINO IR per network (model, weights, transform, pool,
    layer), shared by precisions and dtypes."""
    network = replace(fields.computed("fp32", "torch"), dtype="float32")
    slug = BackboneSpec(fields.model).slug
    return Conversions.under(cache_dir, fields.model, f"{slug}-{network.digest[:16]}")
