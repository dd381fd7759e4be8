"""Resolve a backbone spec into a frozen module that maps images to pooled embeddings.

A spec names the model the way users already do (any timm name, or ``tv/<name>`` for a
torchvision model), where its weights come from
(:mod:`featpipe.backbones.weights`), how to pool, which
layer to read, and optionally the input size. Resolving it gives:

* the full classifier with its weights, ImageNet head included (used to prove the weights are
  right on real photos before the head is removed);
* the embedder: the same network without its classifier, whose output is the pooled vector that
  the classifier would have consumed, never the logits;
* the data config (size, interpolation, crop, mean, std) from the model's own pretrained config;
* a weights identity for the cache key.
"""

from __future__ import annotations

import difflib
import functools
import re
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch
import torchvision
from timm.data import resolve_data_config
from torch import nn

from featpipe.backbones.pooling import MapPool, TokenPool
from featpipe.backbones.spec import CROP_PCT, HF_HUB_PREFIX, TV_PREFIX, BackboneSpec
from featpipe.backbones.tv import TorchvisionEmbedder, family_of
from featpipe.backbones.weights import (
    OFFLINE,
    RANDOM_SEED,
    WeightsChoice,
    hub_reachable,
    load_strict,
    offline_hint,
    read_state_dict,
    resolve_weights,
    sha256_file,
)
from featpipe.choices import POOLS
from featpipe.errors import ArgumentError, FeatpipeError


@dataclass
class LoadedClassifier:
    """A full classifier with its weights, before its head is removed."""

    spec: BackboneSpec
    model: nn.Module
    data_config: dict[str, Any]
    weights: WeightsChoice
    weights_identity: str


@dataclass
class Backbone:
    """A frozen embedder, ready for extraction."""

    spec: BackboneSpec
    module: nn.Module
    data_config: dict[str, Any]
    weights: WeightsChoice
    weights_identity: str
    num_features: int
    is_conv: bool
    info: dict[str, Any] = field(default_factory=dict)
    # the width of each layer of ``spec.layer``, in its order (one value without a layer list):
    # how one forward pass's output splits into per-layer feature sets
    layer_dims: tuple[int, ...] = ()


# --------------------------------------------------------------------------------------------
# Names


@functools.cache
def torchvision_names() -> tuple[str, ...]:
    """``tv/<name>`` for every torchvision classifier whose family featpipe can embed."""
    supported = []
    for name in torchvision.models.list_models(module=torchvision.models):
        try:
            family_of(name)
        except FeatpipeError:
            continue
        supported.append(TV_PREFIX + name)
    return tuple(supported)


def check_model_name(spec: BackboneSpec) -> None:
    """Raise with the closest known names when ``spec.model`` names no model featpipe can build.

    ``hf-hub:timm/NAME`` is accepted for every NAME timm knows (its weights come from that
    repository, as with timm itself). A torchvision model of an unsupported family (known to
    torchvision, no embedding recipe here) says so; any other unknown name gets suggestions.
    """
    model = spec.model
    if spec.is_torchvision:
        if model in torchvision_names():
            return
        if spec.arch in torchvision.models.list_models(module=torchvision.models):
            family_of(spec.arch)  # raises: torchvision has it, featpipe cannot embed its family
    elif model.startswith(HF_HUB_PREFIX):
        if spec.arch != model and timm.is_model(spec.arch):
            return
    elif timm.is_model(model):
        return
    candidates = list(timm.list_models()) + list(torchvision_names())
    close = difflib.get_close_matches(model, candidates, n=4, cutoff=0.6)
    if model.startswith(HF_HUB_PREFIX):
        close += [
            HF_HUB_PREFIX + "timm/" + c
            for c in difflib.get_close_matches(
                spec.arch, timm.list_models(pretrained=True), n=2, cutoff=0.6
            )
        ]
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise ArgumentError(
        "backbone",
        f"{model}: unknown model; {hint}list names with: featpipe models --filter PATTERN",
    )


def list_backbones(pattern: str = "*", offline_only: bool = False) -> list[dict[str, Any]]:
    """Known backbones matching ``pattern``, offline-loadable ones first."""
    import fnmatch

    rows = []
    for name in list(timm.list_models(pattern)) + [
        n for n in torchvision_names() if fnmatch.fnmatch(n, pattern)
    ]:
        package = OFFLINE.get(name)
        offline = package.distribution if package and package.installed() else ""
        if offline_only and not offline:
            continue
        rows.append(
            {
                "name": name,
                "library": "torchvision" if name.startswith(TV_PREFIX) else "timm",
                "offline": offline,
            }
        )
    return sorted(rows, key=lambda r: (not r["offline"], r["name"]))


# --------------------------------------------------------------------------------------------
# Weights identity and data config (cheap: no weights are loaded)


def _timm_pretrained_name(spec: BackboneSpec, choice: WeightsChoice) -> str:
    if choice.kind == "hub" and choice.value:
        return choice.value if "." in choice.value else f"{spec.arch}.{choice.value}"
    return spec.arch


def _timm_pretrained_cfg(spec: BackboneSpec, choice: WeightsChoice) -> Any:
    """timm's pretrained config for these weights, or None where it has none. A ``hub:TAG``
    timm does not know is the user's error, named with the tags it does know."""
    try:
        return timm.models.get_pretrained_cfg(_timm_pretrained_name(spec, choice))
    except RuntimeError:  # timm: "Invalid pretrained tag (TAG) for ARCH."
        tags = [name.split(".", 1)[1] for name in timm.list_pretrained(f"{spec.arch}.*")]
        raise ArgumentError(
            "weights",
            f"{choice.describe()}: timm has no such weights for {spec.model}; choose one of "
            + ", ".join(f"hub:{tag}" for tag in tags),
        ) from None


def _tv_weights_enum(spec: BackboneSpec, choice: WeightsChoice) -> Any:
    enum = torchvision.models.get_model_weights(spec.arch)
    tag = choice.value if choice.kind == "hub" and choice.value else "DEFAULT"
    try:
        return enum[tag]
    except KeyError:
        options = ", ".join(m.name for m in enum)
        raise ArgumentError(
            "weights", f"hub:{tag}: {spec.model} has no such weights; choose one of {options}"
        ) from None


def weights_identity(spec: BackboneSpec, choice: WeightsChoice) -> str:
    """What the cache key calls these weights: a file's sha256, a hub tag, or the seed."""
    if choice.path is not None:
        return f"sha256:{sha256_file(choice.path)}"
    if choice.kind == "none":
        return (
            f"none:seed{RANDOM_SEED}:torch{torch.__version__.split('+')[0]}:timm{timm.__version__}"
        )
    if spec.is_torchvision:
        member = _tv_weights_enum(spec, choice)
        return f"hub:torchvision/{type(member).__name__}.{member.name}:{Path(member.url).name}"
    cfg = _timm_pretrained_cfg(spec, choice)
    if cfg is None:
        raise ArgumentError("weights", f"{choice.describe()}: timm has no pretrained {spec.model}")
    source = cfg.hf_hub_id or cfg.url or spec.arch
    return f"hub:{source}@main"  # timm always fetches the main revision


@functools.cache
def _published_torchvision_files() -> tuple[tuple[str, Any], ...]:
    """Every published torchvision checkpoint as (sha256 prefix from its file name, enum member).

    torchvision names each file ``<name>-<first hex digits of its sha256>.pth`` and checks
    downloads against that prefix; a file with a matching sha256 is that checkpoint.
    """
    found = []
    for name in torchvision.models.list_models(module=torchvision.models):
        for member in torchvision.models.get_model_weights(name):
            match = re.search(r"-([0-9a-f]{8,})\.pth$", member.url)
            if match:
                found.append((match.group(1), member))
    return tuple(found)


def _tv_recipe(member: Any) -> dict[str, Any]:
    """A torchvision weights enum member's own eval transform, as a timm data config."""
    t = member.transforms()
    crop, resize = int(t.crop_size[0]), int(t.resize_size[0])
    return {
        "input_size": (3, crop, crop),
        "interpolation": t.interpolation.value,
        "mean": tuple(float(v) for v in t.mean),
        "std": tuple(float(v) for v in t.std),
        "crop_pct": crop / resize,
        "crop_mode": "center",
    }


def _overridden(config: dict[str, Any], spec: BackboneSpec) -> dict[str, Any]:
    """``config`` with the spec's input size and centre-crop fraction, where it sets them."""
    if spec.image_size is not None:
        if spec.image_size < 16:
            raise ArgumentError(
                "image_size", f"{spec.image_size} is too small; use 16 or more pixels"
            )
        config = {**config, "input_size": (3, spec.image_size, spec.image_size)}
    if spec.crop_pct is not None:
        if not CROP_PCT.ok(spec.crop_pct):
            raise ArgumentError("crop_pct", CROP_PCT.message(spec.crop_pct))
        config = {**config, "crop_pct": float(spec.crop_pct)}
    return config


def data_config(spec: BackboneSpec, choice: WeightsChoice, identity: str) -> dict[str, Any]:
    """The preprocessing of the weights actually loaded, honouring ``image_size`` and
    ``crop_pct``.

    In order: a file that is a published torchvision checkpoint (by its sha256, whichever
    library's architecture loads it: ``mobilenetv2_100`` with torchvision's MobileNetV2 file
    gets that file's recipe, not timm's) uses that checkpoint's transforms; a torchvision model
    uses its chosen weights enum (``DEFAULT`` for other files and for random init); a timm
    model uses timm's pretrained config (``resolve_data_config``) of the tag it loads.
    """
    sha = identity.removeprefix("sha256:") if identity.startswith("sha256:") else None
    published = next(
        (m for prefix, m in _published_torchvision_files() if sha and sha.startswith(prefix)),
        None,
    )
    if published is not None:
        config = _tv_recipe(published)
    elif spec.is_torchvision:
        config = _tv_recipe(_tv_weights_enum(spec, choice))
    else:
        cfg = _timm_pretrained_cfg(spec, choice)
        config = resolve_data_config({}, pretrained_cfg=cfg.to_dict() if cfg else {})
    config = {
        k: tuple(v) if isinstance(v, list) else v
        for k, v in config.items()
        if k in ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")
    }
    return _overridden(config, spec)


# --------------------------------------------------------------------------------------------
# Building


def _timm_hub_model(spec: BackboneSpec, choice: WeightsChoice, **kwargs: Any) -> nn.Module:
    name = _timm_pretrained_name(spec, choice)
    cfg = _timm_pretrained_cfg(spec, choice)
    if cfg is not None and cfg.hf_hub_id and not hub_reachable("huggingface.co"):
        from huggingface_hub import try_to_load_from_cache

        for filename in ("model.safetensors", "pytorch_model.bin"):
            cached = try_to_load_from_cache(cfg.hf_hub_id, filename)
            if isinstance(cached, str):
                overlay = {"file": cached, "hf_hub_id": None, "url": None}
                return timm.create_model(
                    name, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs
                )
        raise ArgumentError(
            "weights",
            f"{choice.describe()}: cannot download {name} weights: huggingface.co is unreachable "
            f"and they are not in the local Hugging Face cache; {offline_hint(spec.model)}",
        )
    try:
        return timm.create_model(name, pretrained=True, **kwargs)
    except (OSError, RuntimeError) as exc:
        raise ArgumentError(
            "weights",
            f"{choice.describe()}: cannot load {name} weights from the hub "
            f"({str(exc).splitlines()[0]}); {offline_hint(spec.model)}",
        ) from None


def _tv_hub_state(spec: BackboneSpec, choice: WeightsChoice) -> dict[str, torch.Tensor]:
    """torchvision's file for these weights, from torch's hub cache or downloaded. Offline and
    not cached, the one-line error comes at once (torch would print a "Downloading:" line to
    stderr before failing)."""
    member = _tv_weights_enum(spec, choice)
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(member.url).name
    host = urllib.parse.urlparse(member.url).hostname or ""
    if not cached.is_file() and not hub_reachable(host):
        reason = f"{host} is unreachable"
    else:
        try:
            return member.get_state_dict(progress=False, check_hash=True)
        except (OSError, RuntimeError) as exc:
            reason = str(exc).splitlines()[0]
    raise ArgumentError(
        "weights",
        f"{choice.describe()}: cannot download {spec.model} weights {member.name} from "
        f"{member.url} ({reason}); {offline_hint(spec.model)}",
    )


def _timm_kwargs(spec: BackboneSpec) -> dict[str, Any]:
    cfg = timm.models.get_pretrained_cfg(spec.arch)
    native = cfg.input_size[-1] if cfg is not None else None
    if spec.image_size and cfg is not None and cfg.fixed_input_size and spec.image_size != native:
        # Position embeddings are resampled at run time for the requested size.
        return {"dynamic_img_size": True}
    return {}


def load_classifier(
    spec: BackboneSpec, choice: WeightsChoice | None = None, drop_path: float = 0.0
) -> LoadedClassifier:
    """The full network with its weights and its original (ImageNet) classifier.

    ``choice`` is the run's resolved ``spec.weights`` (:func:`resolve_weights`), when the
    caller resolved it already; it is resolved here otherwise. ``drop_path``: stochastic depth
    for fine-tuning, built by the network's own builder (it spreads the rate over the blocks);
    it acts only in training, so it is not part of the spec, which is what changes embeddings.
    """
    check_model_name(spec)
    choice = choice if choice is not None else resolve_weights(spec.model, spec.weights)
    identity = weights_identity(spec, choice)
    torch.manual_seed(RANDOM_SEED)  # the "none" control is the same network on every run
    if spec.is_torchvision:
        depth = {"stochastic_depth_prob": drop_path} if drop_path else {}
        try:
            model = torchvision.models.get_model(spec.arch, weights=None, **depth)
        except TypeError:
            if not depth:
                raise
            raise ArgumentError(
                "drop_path",
                f"{drop_path}: {spec.model} has no stochastic depth (torchvision builds it only "
                "for EfficientNet, ConvNeXt, Swin and the like); drop --drop-path",
            ) from None
        classifier = family_of(spec.arch).classifier
        if choice.kind == "hub":
            load_strict(model, _tv_hub_state(spec, choice), spec.model, classifier, "none")
    else:
        kwargs = _timm_kwargs(spec) | ({"drop_path_rate": drop_path} if drop_path else {})
        try:
            model = (
                _timm_hub_model(spec, choice, **kwargs)
                if choice.kind == "hub"
                else timm.create_model(spec.arch, pretrained=False, **kwargs)
            )
        except TypeError as exc:
            if "drop_path_rate" in str(exc):
                raise ArgumentError(
                    "drop_path",
                    f"{drop_path}: {spec.model} has no stochastic depth; drop --drop-path",
                ) from None
            raise ArgumentError(
                "image_size", f"{spec.image_size}: {spec.model} has a fixed input size ({exc})"
            ) from None
        classifier = model.pretrained_cfg.get("classifier")
    if choice.path is not None:
        state = read_state_dict(choice.path)
        load_strict(model, state, str(choice.path), classifier, choice.converter)
    model.eval().requires_grad_(False)
    return LoadedClassifier(spec, model, data_config(spec, choice, identity), choice, identity)


def _timm_layer_indices(model: nn.Module, layer: str) -> list[int]:
    """``"2"``, ``"-1"``, ``"blocks.3"`` or several of them comma-separated → stage indices."""
    modules = [info["module"] for info in model.feature_info]
    indices = []
    for part in (p.strip() for p in layer.split(",")):
        if part.lstrip("-").isdigit() and -len(modules) <= int(part) < len(modules):
            indices.append(int(part) % len(modules))
        elif part in modules:
            indices.append(modules.index(part))
        else:
            raise ArgumentError(
                "layer",
                f"{part}: {model.pretrained_cfg['architecture']} has feature layers "
                f"0..{len(modules) - 1} ({', '.join(modules)})",
            )
    if len(set(indices)) < len(indices):
        raise ArgumentError("layer", f"{layer}: names a layer twice")
    return indices


class TimmIntermediateEmbedder(nn.Module):
    """Pool intermediate stages of a timm model from one ``forward_intermediates`` pass, each
    pooled on its own and concatenated in the order asked (DINOv2's linear evaluation reads the
    last four blocks of one forward)."""

    def __init__(self, model: nn.Module, indices: list[int], pool: str) -> None:
        super().__init__()
        model.prune_intermediate_layers(indices=sorted(indices), prune_head=True)
        self.model = model
        self.indices = indices
        self.tokens = pool in ("cls", "cls+avg")  # the prefix (CLS) token is asked for
        self.pool = pool
        self.map_pool = None if self.tokens else MapPool(pool)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(self.layers(x), dim=1)

    def layers(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Each layer pooled, in the order asked, from one forward pass."""
        prefix = {"return_prefix_tokens": True} if self.tokens else {}  # transformers only
        found = self.model.forward_intermediates(
            x, indices=self.indices, intermediates_only=True, **prefix
        )
        # forward_intermediates returns the stages in ascending order
        by_index = dict(zip(sorted(self.indices), found, strict=True))
        return [self._pooled(by_index[i]) for i in self.indices]

    def _pooled(self, stage: torch.Tensor | tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        if not self.tokens:
            return self.map_pool(stage)
        spatial, prefix = stage
        if self.pool == "cls":
            return prefix[:, 0]
        return torch.cat([prefix[:, 0], spatial.mean(dim=(2, 3))], dim=1)


class TimmTokenEmbedder(nn.Module):
    """A timm transformer's final tokens as the CLS token beside the mean patch token
    (``cls+avg``), after the final norm, as DINOv2's linear evaluation takes them."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.prefix = int(getattr(model, "num_prefix_tokens", 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.model.forward_features(x)
        if tokens.ndim != 3:
            raise ValueError("cls+avg needs a transformer's tokens; this model gives a map")
        return torch.cat([tokens[:, 0], tokens[:, self.prefix :].mean(dim=1)], dim=1)


_TIMM_POOL = {"avg": "avg", "max": "max", "avgmax": "catavgmax", "cls": "token"}


def _timm_embedder(model: nn.Module, spec: BackboneSpec) -> nn.Module:
    if spec.layer is not None:
        return TimmIntermediateEmbedder(model, _timm_layer_indices(model, spec.layer), spec.pool)
    if spec.pool == "cls+avg":
        return TimmTokenEmbedder(model)
    try:
        model.reset_classifier(0, global_pool=_TIMM_POOL[spec.pool])
    except (AssertionError, ValueError, TypeError) as exc:
        message = f"{spec.pool} is not available for {spec.model}: {exc}"
        raise ArgumentError("pool", message) from None
    return model


def _tv_embedder(model: nn.Module, spec: BackboneSpec) -> nn.Module:
    if spec.layer is not None:
        raise ArgumentError(
            "layer",
            f"{spec.layer}: layers are supported for timm models; use the timm equivalent of "
            f"{spec.model}",
        )
    family = family_of(spec.arch)
    if family.tokens:
        pool: nn.Module = TokenPool(spec.pool)
    elif spec.pool in ("cls", "cls+avg"):
        raise ArgumentError("pool", f"{spec.pool} needs a transformer; {spec.model} is a convnet")
    else:
        post = model.get_submodule(family.post_norm) if family.post_norm else None
        pool = MapPool(spec.pool, post)
    setattr(model, family.classifier, nn.Identity())
    return TorchvisionEmbedder(model, spec.arch, pool)


def build_backbone(
    spec: BackboneSpec, choice: WeightsChoice | None = None, drop_path: float = 0.0
) -> Backbone:
    """Load weights, remove the classifier, attach the pooling and check the output shape.

    ``choice``: the run's resolved weights, so that they are looked up once per run;
    ``drop_path``: stochastic depth for fine-tuning (:func:`load_classifier`).
    """
    if spec.pool not in POOLS:
        raise ArgumentError("pool", f"{spec.pool}: choose one of {', '.join(POOLS)}")
    loaded = load_classifier(spec, choice, drop_path)
    model = loaded.model
    is_conv = any(isinstance(m, nn.Conv2d) and m.kernel_size != m.stride for m in model.modules())
    native = model.num_features if hasattr(model, "num_features") else None
    embedder = _tv_embedder(model, spec) if spec.is_torchvision else _timm_embedder(model, spec)
    embedder.eval().requires_grad_(False)
    _, height, width = loaded.data_config["input_size"]
    try:
        with torch.inference_mode():
            zeros = torch.zeros(1, 3, height, width)
            layers = (
                embedder.layers(zeros)
                if isinstance(embedder, TimmIntermediateEmbedder)
                else [embedder(zeros)]
            )
            out = torch.cat(layers, dim=1)
    except Exception as exc:  # a pooling/size combination the architecture cannot take
        raise ArgumentError(
            "pool",
            f"{spec.pool}{' with layer ' + spec.layer if spec.layer else ''}: {spec.model} "
            f"at {height}px failed: {exc}",
        ) from None
    if out.ndim != 2:
        raise ArgumentError(
            "pool", f"{spec.pool}: {spec.model} pools to shape {tuple(out.shape)}, not [B, D]"
        )
    return Backbone(
        spec=spec,
        module=embedder,
        data_config=loaded.data_config,
        weights=loaded.weights,
        weights_identity=loaded.weights_identity,
        num_features=int(out.shape[1]),
        is_conv=is_conv,
        info={"native_num_features": native},
        layer_dims=tuple(int(layer.shape[1]) for layer in layers),
    )
