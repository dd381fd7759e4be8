"""fit --views: torch heads draw views per epoch (exactly the plain fit when the views are the
eval features), scikit-learn heads take them as rows, and the run records the views it used."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TINY, console_script, flags
from featpipe.heads.config import HeadConfig
from featpipe.heads.fitted import fit_heads
from featpipe.heads.train_data import TrainData
from featpipe.heads.views import TrainViews, view_rows


def _data(n: int = 60, d: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    X = rng.normal(size=(n, d)).astype(np.float32) + y[:, None].astype(np.float32)
    return X, y


@pytest.mark.parametrize("mode", ["random", "all"])
@pytest.mark.parametrize("head", ["linear", "mlp"])
def test_views_equal_to_the_eval_features_give_the_plain_fit(mode: str, head: str) -> None:
    X, y = _data()
    Xv, yv = _data(30, seed=1)
    configs = [HeadConfig(head=head, lr=lr, epochs=3, batch_size=16) for lr in (1e-2, 1e-1)]
    data = TrainData(X, y, Xv, yv, ["a", "b", "c"], "classification")
    plain = fit_heads(configs, data)
    k = 3 if mode == "random" else 1  # all K every epoch: K·N rows, so K = 1 is the plain fit
    views = TrainViews(np.repeat(X[:, None], k, axis=1), mode)
    viewed = fit_heads(configs, replace(data, views=views))
    for a, b in zip(plain, viewed, strict=True):
        states = a.module.state_dict().values(), b.module.state_dict().values()
        for p, q in zip(*states, strict=True):
            torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_random_mode_shows_every_image_once_per_epoch_in_a_new_view() -> None:
    n, k = 40, 4
    V = torch.arange(n * k, dtype=torch.float32).view(n, k, 1)  # row value = image·k + view
    rows = view_rows(V.numpy(), torch.arange(n), "random")
    gen = torch.Generator().manual_seed(0)
    epochs = []
    for _ in range(3):
        values = torch.cat([xb[:, 0] for xb, _ in rows.epoch(gen, 16, 3)]).long()
        images = values // k
        assert sorted(images.tolist()) == list(range(n))  # every image once
        targets = torch.cat([yb for _, yb in rows.epoch(torch.Generator(), 16, 3)])
        assert len(targets) == n
        epochs.append(dict(zip(images.tolist(), (values % k).tolist(), strict=True)))
    assert epochs[0] != epochs[1] != epochs[2]  # another view per epoch
    assert len({v for e in epochs for v in e.values()}) == k  # every view is drawn
    every = view_rows(V.numpy(), torch.arange(n), "all")
    assert len(every.y) == n * k
    drawn = torch.cat([xb[:, 0] for xb, _ in every.epoch(gen, 16, 10)]).long()
    assert sorted(drawn.tolist()) == list(range(n * k))  # all K views of every image
    replay = view_rows(V.numpy(), torch.arange(n), "epoch")
    for group in range(2):  # each group of heads (its own generator) starts at view 0
        gen = torch.Generator().manual_seed(group)
        for epoch in range(6):
            values = torch.cat([xb[:, 0] for xb, _ in replay.epoch(gen, 16, 3)]).long()
            assert sorted((values // k).tolist()) == list(range(n))
            assert set((values % k).tolist()) == {epoch % k}  # epoch e shows view e mod K


def test_scikit_learn_heads_take_every_view_as_a_row() -> None:
    from featpipe.heads.preprocess import Preprocessor

    X, y = _data()
    shifted = X + 0.5
    names = ["a", "b", "c"]
    views = TrainViews(shifted[:, None], "random")
    data = TrainData(X, y, None, None, names, "classification", views)
    [viewed] = fit_heads([HeadConfig(head="ridge")], data, 1)
    pre = Preprocessor().fit(X)  # fitted on the eval rows only
    Z = np.concatenate([pre.transform(X), pre.transform(shifted)])
    [rows] = fit_heads(
        [HeadConfig(head="ridge", standardize=False)],
        TrainData(Z, np.concatenate([y, y]), None, None, names, "classification"),
    )
    np.testing.assert_allclose(
        viewed.decision_function(X), rows.decision_function(pre.transform(X)), atol=1e-4
    )


def test_fit_with_views_through_the_console_script_records_them(tree: Path, tmp_path: Path):
    common = [*flags(TINY), "--cache-dir", tmp_path / "cache", "--runs-dir", tmp_path / "runs"]
    sweep = ["--sweep", "head=linear,logreg", "--holdout", "0.3"]
    done = console_script("fit", tree, *common, "--views", 2, *sweep, columns=200, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    [run_json] = (tmp_path / "runs").rglob("run.json")
    # views exist for the train images only: no refit on train + val, and the run says so
    metrics = json.loads((run_json.parent / "metrics.json").read_text())
    assert metrics["trained_on"] == "train" and "views cover the train images" in done.stdout
    assert not (run_json.parent / "selection-head").exists()
    views = json.loads(run_json.read_text())["request"]["views"]
    assert views["count"] == 2 and views["mode"] == "random"
    assert views["augment"]["scale"] == [0.08, 1.0] and views["rows_without_views"] == 0
    assert Path(views["entry"]).is_file() and "-views-" in Path(views["entry"]).name
    listed = console_script(
        "cache", "ls", "--cache-dir", tmp_path / "cache", columns=200, timeout=300
    )
    assert "test_efficientnet (views)" in listed.stdout
    bad = console_script(
        "fit", tree, *common, "--views", 2, "--view-mode", "every", columns=200, timeout=300
    )
    assert bad.returncode == 2 and bad.stderr.strip() == (
        "error: --view-mode every: choose one of random, all, epoch"
    )
    bad = console_script(
        "extract", tree, *common[:-2], "--views", 2, "--crop-scale", 0, columns=200, timeout=300
    )
    assert (
        bad.returncode == 2 and "--crop-scale" in bad.stderr and len(bad.stderr.splitlines()) == 1
    )
