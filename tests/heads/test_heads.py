"""Heads: the stacked trainer against torch.optim and against its sequential twins; scikit-learn
conversions; saving without pickle."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression, Ridge, RidgeClassifier
from sklearn.neighbors import KNeighborsClassifier
from sklearn.svm import LinearSVC

from featpipe.heads.config import HeadConfig, expand, parse_grid_args
from featpipe.heads.fitted import FittedHead, fit_heads
from featpipe.heads.preprocess import Preprocessor
from featpipe.heads.stacked import StackedHeads, train_group
from featpipe.heads.train_data import TrainData


def blobs(n: int = 600, d: int = 24, c: int = 4, seed: int = 0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)).astype(np.float32)
    y = (X @ rng.normal(size=(d, c))).argmax(axis=1)
    return X, y


@pytest.mark.parametrize("kind", ["sgd", "adam", "adamw"])
def test_stacked_optimizer_matches_torch_optim(kind: str) -> None:
    X, y = (torch.from_numpy(a) for a in blobs())
    config = HeadConfig(
        head="linear",
        lr=0.05 if kind == "sgd" else 0.01,
        wd=1e-3,
        optimizer=kind,
        schedule="cosine",
        epochs=3,
        batch_size=64,
    )
    [ours] = train_group([config], X, y, n_out=4)
    gen = torch.Generator().manual_seed(0)
    bound = 1 / math.sqrt(X.shape[1])
    ref = torch.nn.Linear(X.shape[1], 4)
    ref.weight.data = (torch.rand(4, X.shape[1], generator=gen) * 2 - 1) * bound
    ref.bias.data = (torch.rand(4, generator=gen) * 2 - 1) * bound
    optim_cls = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
    extra = {"momentum": 0.9} if kind == "sgd" else {}
    opt = optim_cls[kind](ref.parameters(), lr=config.lr, weight_decay=config.wd, **extra)
    steps = math.ceil(len(X) / 64)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda t: 0.5 * (1 + math.cos(math.pi * t / (3 * steps)))
    )
    order_gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        order = torch.randperm(len(X), generator=order_gen)
        for s in range(steps):
            idx = order[s * 64 : (s + 1) * 64]
            loss = torch.nn.functional.cross_entropy(ref(X[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    torch.testing.assert_close(ours.module[0].weight, ref.weight, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.module[0].bias, ref.bias, atol=1e-5, rtol=1e-5)


class SeededDropout(torch.nn.Module):
    """Inverted dropout with masks from a seeded generator, drawn for a whole stack of ``k``
    heads at once ([K, B, H]) and sliced for head ``index``: the stacked trainer's draws, so
    the reference can use the same masks without sharing any of its code."""

    def __init__(self, p: float, gen: torch.Generator, index: int, k: int) -> None:
        super().__init__()
        self.p, self.gen, self.index, self.k = p, gen, index, k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        keep = 1 - self.p
        mask = torch.rand((self.k, *x.shape), generator=self.gen)[self.index] < keep
        return x * mask / keep


def reference_mlp(
    config: HeadConfig, X: torch.Tensor, y: torch.Tensor, n_out: int, index: int, k: int
):
    """An MLP built from torch.nn and trained by torch.optim, independently of featpipe: the
    same initial draws (nn.Linear's uniform bound from the config's seed), the same minibatch
    order (one permutation per epoch; BatchNorm drops the last partial batch), the same dropout
    masks (head ``index`` of ``k``; generator seeded with seed + 1)."""
    dim, width = X.shape[1], config.hidden
    sizes = [dim] + [width] * config.depth + [n_out]
    masks = torch.Generator().manual_seed(config.seed + 1)
    layers: list[torch.nn.Module] = [torch.nn.BatchNorm1d(dim)] if config.bn else []
    for i in range(len(sizes) - 1):
        layers.append(torch.nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(torch.nn.ReLU())
            if config.bn:
                layers.append(torch.nn.BatchNorm1d(sizes[i + 1]))
            if config.dropout:
                layers.append(SeededDropout(config.dropout, masks, index, k))
    model = torch.nn.Sequential(*layers)
    gen = torch.Generator().manual_seed(config.seed)
    for linear in (m for m in model if isinstance(m, torch.nn.Linear)):
        bound = 1 / math.sqrt(linear.in_features)
        linear.weight.data = (torch.rand(linear.weight.shape, generator=gen) * 2 - 1) * bound
        linear.bias.data = (torch.rand(linear.bias.shape, generator=gen) * 2 - 1) * bound
    optim_cls = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
    extra = {"momentum": 0.9} if config.optimizer == "sgd" else {}
    opt = optim_cls[config.optimizer](
        model.parameters(), lr=config.lr, weight_decay=config.wd, **extra
    )
    batch = config.batch_size
    steps = len(X) // batch if config.bn else math.ceil(len(X) / batch)
    total = config.epochs * steps
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda t: 0.5 * (1 + math.cos(math.pi * t / total))
    )
    order_gen = torch.Generator().manual_seed(config.seed)
    model.train()
    for _ in range(config.epochs):
        order = torch.randperm(len(X), generator=order_gen)
        for s in range(steps):
            idx = order[s * batch : (s + 1) * batch]
            loss = torch.nn.functional.cross_entropy(model(X[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


@pytest.mark.parametrize(
    ("optimizer", "bn", "depth", "dropout"),
    [
        ("adamw", True, 1, 0.0),
        ("sgd", True, 2, 0.0),
        ("adam", False, 1, 0.0),
        ("adamw", True, 2, 0.3),
    ],
)
def test_stacked_mlp_heads_match_torch_optim(
    optimizer: str, bn: bool, depth: int, dropout: float
) -> None:
    """Each MLP of a stack of four (different lr and wd) equals its own torch.optim run."""
    X, y = (torch.from_numpy(a) for a in blobs(n=300))
    grid = expand(
        {"lr": [3e-3, 3e-2], "wd": [0.0, 1e-2]},
        HeadConfig(
            head="mlp",
            optimizer=optimizer,
            bn=bn,
            depth=depth,
            hidden=16,
            dropout=dropout,
            epochs=3,
            batch_size=64,
            seed=3,
        ),
    )
    stacked = train_group(grid, X, y, n_out=4)
    for index, (config, ours) in enumerate(zip(grid, stacked, strict=True)):
        ref = reference_mlp(config, X, y, 4, index, len(grid))
        expected = {k: v for k, v in ref.state_dict().items() if "num_batches" not in k}
        got = {k: v for k, v in ours.module.state_dict().items() if "num_batches" not in k}
        assert got.keys() == expected.keys()
        for name in expected:
            torch.testing.assert_close(got[name], expected[name], atol=2e-5, rtol=1e-4)
        with torch.no_grad():
            torch.testing.assert_close(ours.module(X), ref(X), atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("head", ["linear", "mlp"])
def test_batched_sweep_equals_sequential_fits(head: str) -> None:
    X, y = (torch.from_numpy(a) for a in blobs())
    grid = expand(
        {"lr": [1e-3, 1e-2, 1e-1], "wd": [0.0, 1e-2]},
        HeadConfig(head=head, epochs=4, hidden=16, dropout=0.0, batch_size=32),
    )
    batched = train_group(grid, X[:400], y[:400], X[400:], y[400:], n_out=4)
    for config, head_b in zip(grid, batched, strict=True):
        [alone] = train_group([config], X[:400], y[:400], X[400:], y[400:], n_out=4)
        assert alone.best_epoch == head_b.best_epoch
        with torch.no_grad():
            torch.testing.assert_close(
                alone.module(X[400:]), head_b.module(X[400:]), atol=1e-5, rtol=1e-5
            )
        np.testing.assert_allclose(
            alone.history["val_metric"], head_b.history["val_metric"], atol=1e-6
        )


def test_first_layer_paths_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a first BN: one GEMM over the stacked weights, or a batched product against the
    shared input (large stacks); the same heads either way."""
    X, y = (torch.from_numpy(a) for a in blobs())
    grid = expand({"lr": [1e-3, 1e-2]}, HeadConfig(head="mlp", epochs=2, hidden=16, bn=False))
    one_gemm = train_group(grid, X, y, n_out=4)
    monkeypatch.setattr("featpipe.heads.stacked.ONE_GEMM_MAX", 0)
    batched = train_group(grid, X, y, n_out=4)
    with torch.no_grad():
        for a, b in zip(one_gemm, batched, strict=True):
            torch.testing.assert_close(a.module(X), b.module(X), atol=1e-5, rtol=1e-5)


def test_exported_module_equals_the_stacked_eval_forward() -> None:
    X = torch.from_numpy(blobs()[0])
    config = HeadConfig(head="mlp", epochs=2, hidden=8, depth=2, batch_size=50)
    heads = StackedHeads(config, 3, X.shape[1], 4)
    for _ in range(3):  # move running stats and weights away from their initial values
        heads.forward(X[:100], train=True).mean().backward()
        with torch.no_grad():
            for p in heads.parameters():
                p -= 0.5 * p.grad
                p.grad = None
    with torch.no_grad():
        stacked = heads.forward(X, train=False)
        for k in range(3):
            torch.testing.assert_close(heads.module(k)(X), stacked[k], atol=1e-5, rtol=1e-4)
    assert [type(m).__name__ for m in heads.module(0)][:6] == [
        "BatchNorm1d",
        "Linear",
        "ReLU",
        "BatchNorm1d",
        "Dropout",
        "Linear",
    ]


def test_best_epoch_is_kept() -> None:
    X, y = (torch.from_numpy(a) for a in blobs())
    [head] = train_group(
        [HeadConfig(head="linear", lr=0.5, epochs=8)], X[:300], y[:300], X[300:], y[300:], n_out=4
    )
    val = head.history["val_metric"]
    assert head.best_epoch == int(np.argmax(val))
    with torch.no_grad():
        acc = (head.module(X[300:]).argmax(1) == y[300:]).float().mean().item()
    assert acc == pytest.approx(max(val), abs=1e-6)


@pytest.mark.parametrize(
    ("name", "reference"),
    [
        ("logreg", LogisticRegression(C=1.0, max_iter=2000)),
        ("linearsvc", LinearSVC(C=1.0, max_iter=5000)),
        ("ridge", RidgeClassifier(alpha=1.0)),
        ("knn", KNeighborsClassifier(n_neighbors=10, metric="cosine")),
    ],
)
@pytest.mark.parametrize("classes", [2, 4])
def test_sklearn_heads_predict_exactly_like_sklearn(name, reference, classes) -> None:
    """Every prediction equal; decision values equal up to float32 rounding, with the bound
    derived from the arithmetic (a D-term dot product in float32 of weights rounded to float32
    is off by at most (D + 2)·ε₃₂·(|w|·|x| + |b|)), not a share of disagreements."""
    X, y = blobs(c=classes)
    data = TrainData(
        X[:400], y[:400], None, None, [str(i) for i in range(classes)], "classification"
    )
    [fitted] = fit_heads([HeadConfig(head=name, standardize=False)], data)
    reference.fit(X[:400], y[:400])
    test = X[400:]
    np.testing.assert_array_equal(fitted.predict(test), reference.predict(test))
    if name == "knn":  # vote shares j/k: one correctly rounded float32 division each
        expected = reference.predict_proba(test).astype(np.float32)
        np.testing.assert_array_equal(fitted.predict_proba(test), expected)
        return
    ours = fitted.decision_function(test).astype(np.float64)
    if classes == 2:
        ours = ours[:, 1] - ours[:, 0]  # binary logits are [0, z]: the margin is z exactly
    coef, intercept = np.atleast_2d(reference.coef_), np.atleast_1d(reference.intercept_)
    eps = np.finfo(np.float32).eps
    bound = (X.shape[1] + 2) * eps * (np.abs(test) @ np.abs(coef).T + np.abs(intercept))
    error = np.abs(ours - reference.decision_function(test).reshape(ours.shape))
    assert (error <= bound.reshape(ours.shape)).all()
    if name == "logreg":
        np.testing.assert_allclose(
            fitted.predict_proba(test), reference.predict_proba(test), rtol=0, atol=1e-6
        )


def test_regression_heads() -> None:
    X, _ = blobs()
    y = X[:, 0] * 3.0 + X[:, 1] - 5.0
    [ridge, mlp] = fit_heads(
        [
            HeadConfig(head="ridge", alpha=1e-3, standardize=False),
            HeadConfig(head="mlp", epochs=60, lr=1e-2, dropout=0.0),
        ],
        TrainData(X[:500], y[:500], X[500:], y[500:], [], "regression"),
    )
    ref = Ridge(alpha=1e-3).fit(X[:500], y[:500]).predict(X[500:])
    np.testing.assert_allclose(ridge.predict(X[500:]), ref, atol=1e-4)
    assert mlp.score(X[500:], y[500:]) > 0.9


@pytest.mark.parametrize("head", ["linear", "mlp", "logreg", "knn"])
def test_saved_head_round_trip(tmp_path: Path, head: str) -> None:
    X, y = blobs()
    [fitted] = fit_heads(
        [HeadConfig(head=head, epochs=3, pca=8, l2norm=True)],
        TrainData(X[:400], y[:400], X[400:500], y[400:500], list("abcd"), "classification"),
    )
    fitted.save(tmp_path / "h")
    assert not list(tmp_path.glob("**/*.pkl"))
    loaded = FittedHead.load(tmp_path / "h")
    np.testing.assert_array_equal(loaded.predict_proba(X[500:]), fitted.predict_proba(X[500:]))
    assert loaded.config == fitted.config and loaded.class_names == list("abcd")


@pytest.mark.parametrize(
    ("standardize", "l2norm", "pca"),
    [(True, False, 0), (False, True, 0), (False, False, 8), (True, True, 8), (False, True, 24)],
)
def test_preprocessing_module_equals_transform(standardize, l2norm, pca) -> None:
    """The exported module (what predict and export run) against ``transform()`` and against
    an independent NumPy float64 recomputation from train statistics."""
    X, _ = blobs()
    X = X * np.linspace(0.5, 4.0, X.shape[1], dtype=np.float32) + 3.0  # unequal scales, off 0
    pre = Preprocessor(standardize, l2norm, pca).fit(X[:100])
    module_out = pre.to_module()(torch.from_numpy(X[100:])).numpy()
    np.testing.assert_allclose(module_out, pre.transform(X[100:]), rtol=1e-5, atol=1e-5)
    train, rest = X[:100].astype(np.float64), X[100:].astype(np.float64)
    if standardize:
        mean, std = train.mean(0), train.std(0)
        train, rest = (train - mean) / std, (rest - mean) / std
    if l2norm:
        train = train / np.linalg.norm(train, axis=1, keepdims=True)
        rest = rest / np.linalg.norm(rest, axis=1, keepdims=True)
    if pca:
        center = train.mean(0)
        _, _, vt = np.linalg.svd(train - center, full_matrices=False)
        expected = (rest - center) @ vt[:pca].T
        signs = np.sign((module_out * expected).sum(0))  # a component's sign is arbitrary
        module_out = module_out * signs
    else:
        expected = rest
    assert module_out.shape == (len(rest), pca or X.shape[1])
    np.testing.assert_allclose(module_out, expected, rtol=1e-4, atol=1e-4)


def test_grid_expansion_drops_options_a_head_ignores() -> None:
    configs = expand(parse_grid_args(["head=linear,knn", "lr=1e-3,1e-2"]))
    assert [(c.head, c.lr) for c in configs] == [("linear", 1e-3), ("linear", 1e-2), ("knn", 1e-3)]


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("weighted", [False, True])
def test_stacked_loss_is_torch_cross_entropy(smoothing: float, weighted: bool) -> None:
    from featpipe.heads.stacked import _loss

    gen = torch.Generator().manual_seed(0)
    out = torch.randn(3, 50, 7, generator=gen)
    y = torch.randint(0, 7, (50,), generator=gen)
    weights = torch.rand(7, generator=gen) + 0.5 if weighted else None
    ours = _loss(out, y, HeadConfig(label_smoothing=smoothing), weights)
    for k in range(3):
        ref = torch.nn.functional.cross_entropy(
            out[k], y, weight=weights, label_smoothing=smoothing
        )
        torch.testing.assert_close(ours[k], ref)
