"""Train K torch heads in one pass over cached features: stacked parameters, one optimizer.

Heads that share an architecture and a training recipe (optimizer, schedule, epochs, batch
size, seed, …) but differ in learning rate and weight decay are trained together: their weights
are stacked along a leading K axis, every minibatch is gathered once for all of them, the first
layer of all K linear heads is one matrix product (``[B, D] @ [D, K·O]``; MLPs use one batched
product), and a vectorised optimizer applies each head's own learning rate and weight decay.
This is the dinov2 linear-evaluation trick without the backbone forward: the features are
already cached.

Each head sees exactly what it would see alone: the same initial weights (drawn from its seed),
the same minibatch order, the same updates, the same learning-rate schedule
(:mod:`featpipe.heads.schedules`, shared with fine-tuning), and comes out as the module
:func:`featpipe.heads.mlp.build_head` builds. A group of one is the sequential fit, so the
batched sweep and its sequential twin share all of this code; that is why tests hold linear and
MLP heads (BatchNorm included) to an independent ``torch.nn`` model trained by ``torch.optim``,
and another holds the batch to its twins.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from featpipe.heads import placement
from featpipe.heads.config import HeadConfig
from featpipe.heads.mlp import BN_EPS, BN_MOMENTUM, build_head, layer_sizes, uses_bn
from featpipe.heads.rows import Batches, InMemory
from featpipe.heads.schedules import lr_factor
from featpipe.heads.train_data import TrainData
from featpipe.heads.views import view_rows
from featpipe.runtime.allocator import keep_freed_memory

ONE_GEMM_MAX = 1 << 22  # stacked first-layer weights (floats) still laid out for one GEMM


@dataclass
class TrainedHead:
    """One head out of a stacked run: a standard ``nn.Module`` plus its curves."""

    config: HeadConfig
    module: nn.Module
    history: dict[str, list[float]] = field(default_factory=dict)
    best_epoch: int = 0
    seconds: float = 0.0


def group_key(config: HeadConfig) -> tuple:
    """Heads with equal keys can share a pass: everything but lr and wd must agree."""
    params = config.params()
    return tuple((k, v) for k, v in params.items() if k not in ("lr", "wd"))


class StackedOptimizer:
    """SGD (momentum 0.9), Adam or AdamW over stacked parameters, one lr and wd per head.

    The arithmetic is ``torch.optim``'s (weight decay on every parameter, as in one param
    group): SGD and Adam add ``wd·p`` to the gradient, AdamW decays the weights directly.

    Every step works in place: gradients are zeroed rather than freed, and Adam's update goes
    through one preallocated buffer per parameter. Stacked MLP weights are large (K·D·2D
    floats); allocating temporaries of that size each step made the kernel page-fault fresh
    memory in, which cost more than the arithmetic.
    """

    def __init__(
        self, params: list[torch.Tensor], kind: str, lr: torch.Tensor, wd: torch.Tensor
    ) -> None:
        self.params, self.kind, self.lr, self.wd = params, kind, lr, wd
        self.t = 0
        self.state = [
            (torch.zeros_like(p), torch.zeros_like(p), torch.empty_like(p))
            if kind != "sgd"
            else [None]
            for p in params
        ]

    def _per_head(self, value: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return value.view(-1, *([1] * (like.ndim - 1)))

    @torch.no_grad()
    def step(self, scale: float) -> None:
        self.t += 1
        for p, state in zip(self.params, self.state, strict=True):
            if p.grad is None:
                continue
            grad = p.grad  # ours to overwrite: zero_grad() zeroes it before the next backward
            lr = self._per_head(self.lr * scale, p)
            wd = self._per_head(self.wd, p)
            if self.kind != "adamw":
                grad.addcmul_(p, wd)
            if self.kind == "sgd":
                if state[0] is None:
                    state[0] = grad.clone()
                else:
                    state[0].mul_(0.9).add_(grad)
                p.addcmul_(state[0], lr, value=-1)
                continue
            m, v, buf = state
            if self.kind == "adamw":
                p.mul_(1 - lr * wd)
            m.mul_(0.9).add_(grad, alpha=0.1)
            v.mul_(0.999).addcmul_(grad, grad, value=0.001)
            torch.div(v, 1 - 0.999**self.t, out=buf).sqrt_().add_(1e-8)
            torch.div(m, buf, out=buf)
            p.addcmul_(buf, lr / (1 - 0.9**self.t), value=-1)

    def zero_grad(self) -> None:
        for p in self.params:
            if p.grad is not None:
                p.grad.zero_()


class StackedHeads:
    """The parameters and forward pass of K heads of one architecture."""

    def __init__(
        self, config: HeadConfig, k: int, dim: int, out: int, device: torch.device | None = None
    ) -> None:
        gen = torch.Generator().manual_seed(config.seed)  # on the CPU: the same draw anywhere
        device = device or torch.device("cpu")
        self.config, self.k, self.dim, self.out = config, k, dim, out
        sizes = layer_sizes(config, dim, out)
        self.weights, self.biases = [], []
        for fan_in, fan_out in itertools.pairwise(sizes):
            bound = 1 / math.sqrt(fan_in)  # nn.Linear's default initialisation
            w = (torch.rand(fan_out, fan_in, generator=gen) * 2 - 1) * bound
            b = (torch.rand(fan_out, generator=gen) * 2 - 1) * bound
            self.weights.append(w.t().unsqueeze(0).repeat(k, 1, 1).to(device).requires_grad_())
            self.biases.append(b.unsqueeze(0).repeat(k, 1).to(device).requires_grad_())
        self.norms: list[dict[str, torch.Tensor]] = []
        if uses_bn(config):
            for size in sizes[:-1]:
                self.norms.append(
                    {
                        "weight": torch.ones(k, size, device=device, requires_grad=True),
                        "bias": torch.zeros(k, size, device=device, requires_grad=True),
                        "running_mean": torch.zeros(k, size, device=device),
                        "running_var": torch.ones(k, size, device=device),
                    }
                )
        self.dropout_gen = torch.Generator(device).manual_seed(config.seed + 1)

    def parameters(self) -> list[torch.Tensor]:
        norms = [n[p] for n in self.norms for p in ("weight", "bias")]
        return [*self.weights, *self.biases, *norms]

    def _norm(self, i: int, z: torch.Tensor, train: bool) -> torch.Tensor:
        """Batch norm of ``z`` [K, B, H] per head (statistics over B)."""
        norm = self.norms[i]
        if train:
            mean = z.mean(dim=1)
            var = z.var(dim=1, unbiased=False)
            with torch.no_grad():
                n = z.shape[1]
                norm["running_mean"].lerp_(mean, BN_MOMENTUM)
                norm["running_var"].lerp_(var * n / max(1, n - 1), BN_MOMENTUM)
        else:
            mean, var = norm["running_mean"], norm["running_var"]
        scale = norm["weight"] / torch.sqrt(var + BN_EPS)
        return (z - mean.unsqueeze(1)) * scale.unsqueeze(1) + norm["bias"].unsqueeze(1)

    def _first_layer(self, x: torch.Tensor, train: bool) -> torch.Tensor:
        """Layer 0 of all K heads: ``x`` [B, D] → [K, B, O].

        Without a first BN every head reads the same input, so small stacks (linear heads) are
        one GEMM ``[B, D] @ [D, K·O]``. Large stacks (MLPs: K·D·2D weights) use a batched
        product against the shared input instead, because laying their weights out for one
        GEMM would copy all of them at every step. With a first BN the statistics are shared
        but the affine is per head, so each head gets its own normalised input.
        """
        k, batch = self.k, x.shape[0]
        w0, b0 = self.weights[0], self.biases[0]
        if self.norms:
            norm = self.norms[0]
            if train:
                mean, var = x.mean(dim=0), x.var(dim=0, unbiased=False)
                with torch.no_grad():
                    norm["running_mean"].lerp_(mean.expand(k, -1), BN_MOMENTUM)
                    unbiased = var * batch / max(1, batch - 1)
                    norm["running_var"].lerp_(unbiased.expand(k, -1), BN_MOMENTUM)
                x_hat = ((x - mean) / torch.sqrt(var + BN_EPS)).expand(k, -1, -1)
            else:
                mean, var = norm["running_mean"].unsqueeze(1), norm["running_var"].unsqueeze(1)
                x_hat = (x.unsqueeze(0) - mean) / torch.sqrt(var + BN_EPS)
            x_k = x_hat * norm["weight"].unsqueeze(1) + norm["bias"].unsqueeze(1)
            return torch.baddbmm(b0.unsqueeze(1), x_k, w0)
        if w0.numel() <= ONE_GEMM_MAX:
            h = x @ w0.permute(1, 0, 2).reshape(self.dim, -1)
            return h.view(batch, k, -1).transpose(0, 1) + b0.unsqueeze(1)
        return torch.baddbmm(b0.unsqueeze(1), x.expand(k, -1, -1), w0)

    def forward(self, x: torch.Tensor, train: bool) -> torch.Tensor:
        """``x`` [B, D] → outputs [K, B, O]."""
        h = self._first_layer(x, train)
        for i in range(1, len(self.weights)):
            h = torch.relu(h)
            if self.norms:
                h = self._norm(i, h, train)
            if train and self.config.dropout > 0:
                keep = 1 - self.config.dropout
                mask = torch.rand(h.shape, generator=self.dropout_gen, device=h.device) < keep
                h = h * mask / keep
            h = torch.baddbmm(self.biases[i].unsqueeze(1), h, self.weights[i])
        return h

    def module(self, index: int) -> nn.Module:
        """Head ``index`` as the standard module :func:`~featpipe.heads.mlp.build_head` builds
        (BN → Linear → ReLU → BN → Dropout → Linear for an MLP), holding its trained values."""
        module = build_head(self.config, self.dim, self.out)
        linears = (m for m in module if isinstance(m, nn.Linear))
        norms = (m for m in module if isinstance(m, nn.BatchNorm1d))
        with torch.no_grad():
            for weight, bias, linear in zip(self.weights, self.biases, linears, strict=True):
                linear.weight.copy_(weight[index].t())
                linear.bias.copy_(bias[index])
            for stats, norm in zip(self.norms, norms, strict=True):
                for name in ("weight", "bias", "running_mean", "running_var"):
                    getattr(norm, name).copy_(stats[name][index])
        return module.eval()

    def snapshot(self) -> list[torch.Tensor]:
        tensors = [*self.parameters()]
        tensors += [n[s] for n in self.norms for s in ("running_mean", "running_var")]
        return [t.detach().clone() for t in tensors]

    def restore(self, saved: list[torch.Tensor], heads: torch.Tensor) -> None:
        """Copy the saved values back for the heads in the boolean mask ``heads``."""
        tensors = [*self.parameters()]
        tensors += [n[s] for n in self.norms for s in ("running_mean", "running_var")]
        with torch.no_grad():
            for current, old in zip(tensors, saved, strict=True):
                current[heads] = old[heads]


def _loss(
    out: torch.Tensor, y: torch.Tensor, config: HeadConfig, weights: torch.Tensor | None
) -> torch.Tensor:
    """Per-head mean loss [K]: ``F.cross_entropy``'s arithmetic (weights, label smoothing).

    The log-softmax runs over a class-first layout: with few classes and K·B rows, PyTorch's CPU
    kernel along a short last axis took 649 µs for 8,192 × 10 logits, along the first 47 µs.
    """
    if out.shape[2] == 1 and y.dtype.is_floating_point:
        return ((out.squeeze(2) - y) ** 2).mean(dim=1)
    logp = F.log_softmax(out.permute(2, 0, 1), dim=0)  # [O, K, B]
    nll = -logp.gather(0, y.view(1, 1, -1).expand(1, out.shape[0], -1)).squeeze(0)
    eps = config.label_smoothing
    if weights is None:
        per = (1 - eps) * nll - eps * logp.mean(dim=0) if eps else nll
        return per.mean(dim=1)
    per = (1 - eps) * weights[y] * nll
    if eps:
        per = per - eps * (logp * weights.view(-1, 1, 1)).sum(dim=0) / len(weights)
    return per.sum(dim=1) / weights[y].sum()


def _metric(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-head accuracy, or R² for regression [K]."""
    if out.shape[2] == 1 and y.dtype.is_floating_point:
        residual = ((out.squeeze(2) - y) ** 2).sum(dim=1)
        total = ((y - y.mean()) ** 2).sum().clamp_min(1e-12)
        return 1 - residual / total
    return (out.permute(2, 0, 1).argmax(dim=0) == y).float().mean(dim=1)  # class-first: fast


def evaluate(
    heads: StackedHeads,
    rows: Batches,
    config: HeadConfig,
    weights: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-head loss and metric on a whole split, in chunks (eval mode)."""
    with torch.no_grad():
        out = torch.cat([heads.forward(X, train=False) for X, _ in rows.blocks()], dim=1)
        return _loss(out, rows.y, config, weights), _metric(out, rows.y)


def train_group(
    configs: list[HeadConfig],
    X: torch.Tensor,
    y: torch.Tensor,
    X_val: torch.Tensor | None = None,
    y_val: torch.Tensor | None = None,
    n_out: int = 0,
) -> list[TrainedHead]:
    """Train heads that share :func:`group_key` in one pass; ``n_out`` 0 means regression."""
    val = InMemory(X_val, y_val) if X_val is not None and y_val is not None else None
    return train_batches(configs, InMemory(X, y), val, n_out)


def train_batches(
    configs: list[HeadConfig], train: Batches, val: Batches | None, n_out: int
) -> list[TrainedHead]:
    """:func:`train_group` over any row source (memory, or an entry streamed in chunks), on the
    device :mod:`featpipe.heads.placement` holds (the CPU unless a fit chose another)."""
    device = placement.current()
    train = placement.place(train, device)
    val = placement.place(val, device) if val is not None else None
    config = configs[0]
    if any(group_key(c) != group_key(config) for c in configs):
        raise ValueError("train_group needs configs that differ only in lr and wd")
    start = time.perf_counter()
    y = train.y
    k, n, dim = len(configs), len(y), train.dim
    heads = StackedHeads(config, k, dim, n_out or 1, device)
    lr = torch.tensor([c.lr for c in configs], dtype=torch.float32, device=device)
    wd = torch.tensor([c.wd for c in configs], dtype=torch.float32, device=device)
    optimizer = StackedOptimizer(heads.parameters(), config.optimizer, lr, wd)
    weights = None
    if n_out and config.class_weight == "balanced":
        counts = torch.bincount(y, minlength=n_out).float().clamp_min(1)
        weights = n / (n_out * counts)
    batch = min(config.batch_size, n)
    steps = max(1, n // batch) if heads.norms else math.ceil(n / batch)
    gen = torch.Generator().manual_seed(config.seed)
    history: dict[str, list[list[float]]] = {
        "train_loss": [],
        "train_metric": [],
        "val_loss": [],
        "val_metric": [],
    }
    best = torch.full((k,), -math.inf, device=device)
    best_epoch = torch.zeros(k, dtype=torch.long, device=device)
    saved = heads.snapshot()
    step = 0
    for epoch in range(config.epochs):
        sums = torch.zeros(2, k, device=device)
        for xb, yb in train.epoch(gen, batch, steps):
            out = heads.forward(xb, train=True)
            loss = _loss(out, yb, config, weights)
            loss.sum().backward()
            optimizer.step(lr_factor(config.schedule, step, config.epochs * steps))
            optimizer.zero_grad()
            step += 1
            sums += torch.stack([loss.detach(), _metric(out.detach(), yb)]) * len(yb)
        seen = min(n, steps * batch)
        history["train_loss"].append((sums[0] / seen).tolist())
        history["train_metric"].append((sums[1] / seen).tolist())
        if val is None or len(val.y) == 0:
            continue
        val_loss, val_metric = evaluate(heads, val, config, weights)
        history["val_loss"].append(val_loss.tolist())
        history["val_metric"].append(val_metric.tolist())
        improved = val_metric > best
        best = torch.where(improved, val_metric, best)
        best_epoch = torch.where(improved, torch.tensor(epoch, device=device), best_epoch)
        new = heads.snapshot()
        for old_t, new_t in zip(saved, new, strict=True):
            old_t[improved] = new_t[improved]
        if config.patience and bool(((epoch - best_epoch) >= config.patience).all()):
            break
    if history["val_metric"]:
        every = torch.ones(k, dtype=torch.bool, device=device)
        heads.restore(saved, every)  # every head at its best epoch
    else:
        best_epoch[:] = len(history["train_loss"]) - 1
    seconds = (time.perf_counter() - start) / k
    return [
        TrainedHead(
            config=c,
            module=heads.module(i),
            history={
                name: [epoch_values[i] for epoch_values in values]
                for name, values in history.items()
            },
            best_epoch=int(best_epoch[i]),
            seconds=seconds,
        )
        for i, c in enumerate(configs)
    ]


def train_torch_heads(configs: list[HeadConfig], data: TrainData) -> list[TrainedHead]:
    """Group ``configs`` by :func:`group_key` and train each group in one pass on ``data``, as
    the heads see it (preprocessed).

    With ``data.views`` (N × K × D), training rows are drawn from the augmented views of the
    rows of ``data.X`` (:mod:`featpipe.heads.views`); validation stays on ``data.X_val``.
    """
    n_out = data.n_out
    shift, scale = target_scaling(data.y, n_out)
    targets = training_targets(data.y, n_out, shift, scale)
    train: Batches = (
        InMemory(torch.from_numpy(np.ascontiguousarray(data.X)), targets)
        if data.views is None
        else view_rows(data.views.X, targets, data.views.mode)
    )
    val = None
    if data.watched:
        Xv = torch.from_numpy(np.ascontiguousarray(data.X_val))
        val = InMemory(Xv, training_targets(data.y_val, n_out, shift, scale))
    return train_sources(configs, train, val, n_out, shift, scale)


def target_scaling(y: np.ndarray, n_out: int) -> tuple[float, float]:
    """Regression targets are standardised for training (lr and init are scale-free then) and
    the scale is folded back into each head's last layer afterwards: ``(shift, scale)``."""
    return (0.0, 1.0) if n_out else (float(np.mean(y)), float(np.std(y)) or 1.0)


def training_targets(y: np.ndarray, n_out: int, shift: float, scale: float) -> torch.Tensor:
    return torch.as_tensor(
        (np.asarray(y) - shift) / scale, dtype=torch.long if n_out else torch.float32
    )


def train_sources(
    configs: list[HeadConfig],
    train: Batches,
    val: Batches | None,
    n_out: int,
    shift: float = 0.0,
    scale: float = 1.0,
) -> list[TrainedHead]:
    """:func:`train_torch_heads` over row sources whose targets :func:`training_targets` made.
    The rows go to the training device once here, for every group."""
    keep_freed_memory()
    device = placement.current()
    train = placement.place(train, device)
    val = placement.place(val, device) if val is not None else None
    groups: dict[tuple, list[int]] = {}
    for i, c in enumerate(configs):
        groups.setdefault(group_key(c), []).append(i)
    trained: list[TrainedHead | None] = [None] * len(configs)
    for members in groups.values():
        group = train_batches([configs[i] for i in members], train, val, n_out)
        for i, head in zip(members, group, strict=True):
            if not n_out:
                last = head.module[-1]
                with torch.no_grad():
                    last.weight.mul_(scale)
                    last.bias.mul_(scale).add_(shift)
            trained[i] = head
    return [t for t in trained if t is not None]
