"""``featpipe inspect``: a backbone's structure from a real forward pass, not ``print(model)``.

For every module down to a chosen depth: the name to pass to ``--unfreeze``, its type, its
output shape at the model's input size, and its parameters split into trainable and frozen under
a freezing spec. Also the blocks that ``last:N`` counts, and timm's ``feature_info`` stages
(channels and reduction, i.e. the stride relative to the input).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from featpipe.backbones.build import BackboneSpec, build_backbone, load_classifier
from featpipe.backbones.tv import TorchvisionEmbedder
from featpipe.finetuning.blocks import all_blocks, apply_trainable, trainable_set
from featpipe.finetuning.model import FinetuneModel


@dataclass
class Node:
    name: str
    kind: str
    shape: tuple[int, ...] | None
    trainable: int
    frozen: int
    children: list[Node] = field(default_factory=list)


@dataclass
class Description:
    model: str
    input_size: tuple[int, ...]
    root: Node
    blocks: list[dict[str, Any]]
    stages: list[dict[str, Any]]
    embedding_dim: int


def _display(name: str) -> str:
    name = name[len("backbone.") :] if name.startswith("backbone.") else name
    return name[len("model.") :] if name.startswith("model.") else name


def describe(spec: BackboneSpec, depth: int = 2, unfreeze: str = "head") -> Description:
    """Build the backbone (with a stand-in linear head) and trace one forward pass."""
    backbone = build_backbone(spec)
    model = FinetuneModel(backbone.module, nn.Linear(backbone.num_features, 2))
    apply_trainable(model, trainable_set(model, unfreeze))
    shapes: dict[str, tuple[int, ...]] = {}
    hooks = []
    for name, module in model.named_modules():
        if name and name.count(".") < depth + 3:

            def hook(_m: nn.Module, _i: Any, out: Any, name: str = name) -> None:
                if isinstance(out, torch.Tensor):
                    shapes[name] = tuple(out.shape)

            hooks.append(module.register_forward_hook(hook))
    size = tuple(backbone.data_config["input_size"])
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, *size))
    for handle in hooks:
        handle.remove()

    def kids(name: str, module: nn.Module) -> list[tuple[str, nn.Module]]:
        """Children as --unfreeze names them: the torchvision wrapper's ``model`` is skipped."""
        if isinstance(module, TorchvisionEmbedder):
            inner = [(f"{name}.model.{c}", m) for c, m in module.model.named_children()]
            return [*inner, (f"{name}.pool", module.pool)]
        return [(f"{name}.{c}" if name else c, m) for c, m in module.named_children()]

    def node(name: str, module: nn.Module, level: int) -> Node:
        params = list(module.parameters())
        children = (
            [
                node(child_name, child, level + 1)
                for child_name, child in kids(name, module)
                if not isinstance(child, nn.Identity)
            ]
            if level < depth
            else []
        )
        return Node(
            _display(name) or spec.model,
            type(module).__name__,
            shapes.get(name),
            sum(p.numel() for p in params if p.requires_grad),
            sum(p.numel() for p in params if not p.requires_grad),
            children,
        )

    params = dict(model.named_parameters())
    blocks = [
        {
            "name": b.name,
            "params": sum(params[p].numel() for p in b.params),
            "trainable": all(params[p].requires_grad for p in b.params),
        }
        for b in all_blocks(model)
    ]
    stages = [
        {"module": info["module"], "channels": info["num_chs"], "reduction": info["reduction"]}
        for info in getattr(backbone.module, "feature_info", []) or []
        if isinstance(info, dict)
    ]
    return Description(spec.model, size, node("", model, -2), blocks, stages, backbone.num_features)


def export_for_netron(spec: BackboneSpec, fmt: str, out: Path) -> Path:
    """The full classifier (weights and original head) as TorchScript or ONNX."""
    import warnings

    loaded = load_classifier(spec)
    example = torch.zeros(1, *loaded.data_config["input_size"])
    out.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if fmt == "torchscript":
            torch.jit.trace(loaded.model, example).save(str(out))
        else:
            torch.onnx.export(
                loaded.model,
                (example,),
                str(out),
                opset_version=17,
                dynamo=False,
                input_names=["images"],
                output_names=["logits"],
                dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
            )
    return out
