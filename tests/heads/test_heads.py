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

from featpipe.errors import FeatpipeError
from featpipe.heads.config import HeadConfig, expand, parse_grid_args
from featpipe.heads.fitted import FittedHead, Head, fit_heads
from featpipe.heads.preprocess import Preprocessor
from featpipe.heads.stacked import StackedHeads, train_group


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
    X, y = blobs(c=classes)
    [fitted] = fit_heads(
        [HeadConfig(head=name, standardize=False)],
        X[:400],
        y[:400],
        None,
        None,
        [str(i) for i in range(classes)],
        "classification",
    )
    expected = reference.fit(X[:400], y[:400]).predict(X[400:])
    assert (fitted.predict(X[400:]) == expected).mean() >= 0.995
    if name == "logreg":
        np.testing.assert_allclose(
            fitted.predict_proba(X[400:]), reference.predict_proba(X[400:]), atol=1e-5
        )


def test_regression_heads() -> None:
    X, _ = blobs()
    y = X[:, 0] * 3.0 + X[:, 1] - 5.0
    [ridge, mlp] = fit_heads(
        [
            HeadConfig(head="ridge", alpha=1e-3, standardize=False),
            HeadConfig(head="mlp", epochs=60, lr=1e-2, dropout=0.0),
        ],
        X[:500],
        y[:500],
        X[500:],
        y[500:],
        [],
        "regression",
    )
    ref = Ridge(alpha=1e-3).fit(X[:500], y[:500]).predict(X[500:])
    np.testing.assert_allclose(ridge.predict(X[500:]), ref, atol=1e-4)
    assert mlp.score(X[500:], y[500:]) > 0.9
    with pytest.raises(FeatpipeError, match="head logreg is a classifier"):
        Head(head="logreg").fit(X, y)


@pytest.mark.parametrize("head", ["linear", "mlp", "logreg", "knn"])
def test_saved_head_round_trip(tmp_path: Path, head: str) -> None:
    X, y = blobs()
    [fitted] = fit_heads(
        [HeadConfig(head=head, epochs=3, pca=8, l2norm=True)],
        X[:400],
        y[:400],
        X[400:500],
        y[400:500],
        list("abcd"),
        "classification",
    )
    fitted.save(tmp_path / "h")
    assert not list(tmp_path.glob("**/*.pkl"))
    loaded = FittedHead.load(tmp_path / "h")
    np.testing.assert_array_equal(loaded.predict_proba(X[500:]), fitted.predict_proba(X[500:]))
    assert loaded.config == fitted.config and loaded.class_names == list("abcd")


def test_preprocessing_is_fitted_on_train_only() -> None:
    X, _ = blobs()
    pre = Preprocessor(standardize=True).fit(X[:100])
    np.testing.assert_allclose(pre.arrays["mean"], X[:100].mean(axis=0), atol=1e-6)
    module = pre.to_module()
    torch.testing.assert_close(module(torch.from_numpy(X)), torch.from_numpy(pre.transform(X)))


def test_estimator_api_and_option_validation() -> None:
    X, y = blobs()
    head = Head(head="linear", lr="0.01", epochs=5)
    assert head.get_params()["lr"] == 0.01
    assert head.set_params(epochs=6).get_params()["epochs"] == 6
    assert head.fit(X[:400], y[:400]).score(X[400:], y[400:]) > 0.5
    with pytest.raises(FeatpipeError, match="unknown head option 'learning_rate'"):
        Head(learning_rate=0.1)
    with pytest.raises(FeatpipeError, match="sweep value epochs='ten' is not a valid int"):
        parse_grid_args(["epochs=ten"])
    with pytest.raises(FeatpipeError, match="unknown head 'svm': choose one of"):
        parse_grid_args(["head=svm,linear"])
    with pytest.raises(FeatpipeError, match="is not fitted"):
        Head().predict(X)


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
