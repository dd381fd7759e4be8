"""``featpipe inspect``: a backbone's blocks, shapes and parameter counts (names for --unfreeze)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table
from rich.tree import Tree

from featpipe.errors import FeatpipeError

from . import options as opt
from .render import console, human_count, plain


def inspect(
    backbone: str = typer.Argument(..., help="timm name or tv/<name>."),
    weights: str = opt.Weights,
    image_size: int | None = opt.ImageSize,
    depth: int = typer.Option(2, help="Tree depth."),
    unfreeze: str = typer.Option("head", help="Show trainable/frozen under this spec."),
    export: str | None = typer.Option(None, help="torchscript | onnx: write a file for Netron."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Export path."),
) -> None:
    """Blocks and stages with output shapes and parameter counts (names for --unfreeze)."""
    from featpipe.backbones.build import BackboneSpec  # torch: only when inspect runs
    from featpipe.finetuning.inspect import describe, export_for_netron  # torch: likewise

    spec = BackboneSpec(backbone, weights, image_size=image_size)
    if export:
        if export not in ("torchscript", "onnx"):
            raise FeatpipeError(f"--export {export}: choose torchscript or onnx")
        target = out or Path(f"{spec.slug}.{'pt' if export == 'torchscript' else 'onnx'}")
        export_for_netron(spec, export, target)
        plain(f"wrote {target}: open it in Netron (https://netron.app)")
        return
    d = describe(spec, depth, unfreeze)

    def label(node) -> str:
        shape = "×".join(str(s) for s in node.shape[1:]) if node.shape else "-"
        return (
            f"[bold]{node.name}[/] [dim]{node.kind}[/]  out {shape}  "
            f"[green]{human_count(node.trainable)} trainable[/] / {human_count(node.frozen)} frozen"
        )

    def grow(tree: Tree, node) -> None:
        for child in node.children:
            grow(tree.add(label(child)), child)

    tree = Tree(label(d.root))
    grow(tree, d.root)
    console().print(
        f"{d.model}: input {'×'.join(map(str, d.input_size))}, embedding {d.embedding_dim}"
    )
    console().print(tree)
    blocks = Table(title="blocks (what last:N counts; names work in --unfreeze)")
    for column in ("#", "block", "params", f"trainable under '{unfreeze}'"):
        blocks.add_column(column)
    for i, block in enumerate(d.blocks):
        blocks.add_row(
            str(i), block["name"], human_count(block["params"]), "yes" if block["trainable"] else ""
        )
    console().print(blocks)
    if d.stages:
        stages = Table(title="feature stages (timm feature_info)")
        for column in ("module", "channels", "reduction (stride)"):
            stages.add_column(column)
        for s in d.stages:
            stages.add_row(s["module"], str(s["channels"]), str(s["reduction"]))
        console().print(stages)
