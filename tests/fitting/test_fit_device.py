"""``fit --device``: where the stacked torch heads train, tested on the CPU.

On a machine without CUDA, ``cpu`` and ``auto`` give today's heads exactly, ``cuda`` is one
line naming ``--device``, and the streamed placement (features left on the host, each
minibatch copied to the device: the CUDA path for features over the budget) trains the same
heads as the resident one, because it draws the same rows in the same order.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TINY, TINY_EXTRACT, console_script, flags, make_tree
from featpipe.errors import ArgumentError
from featpipe.fitting.stage import fit
from featpipe.heads import placement
from featpipe.heads.config import HeadConfig
from featpipe.heads.rows import InMemory
from featpipe.heads.stacked import train_torch_heads
from featpipe.heads.train_data import TrainData

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")


def _data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 24)).astype(np.float32)
    return X, (X[:, :3].argmax(axis=1) + (X[:, 3] > 1)).astype(np.int64) % 4


def _states(heads: list) -> list[dict[str, torch.Tensor]]:
    return [t.module.state_dict() for t in heads]


@pytest.mark.parametrize(
    "config",
    [
        HeadConfig(head="linear", epochs=3, batch_size=32),
        HeadConfig(head="mlp", hidden=16, dropout=0.3, epochs=3, batch_size=32),
    ],
)
def test_streamed_placement_trains_the_same_heads_as_resident(
    config: HeadConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    X, y = _data()
    grid = [config, HeadConfig(**(config.to_dict() | {"lr": 0.01, "wd": 0.01}))]
    data = TrainData(X[:240], y[:240], X[240:], y[240:], list("abcd"), "classification")
    resident = train_torch_heads(grid, data)
    placed: list[object] = []
    real_place = placement.place

    def spy(rows, device, limit=None):  # the budget says no: features stay on the host
        placed.append(out := real_place(rows, device, 0))
        return out

    monkeypatch.setattr(placement, "place", spy)
    with placement.training_on(torch.device("cpu")):
        streamed = train_torch_heads(grid, data)
    assert placed and all(isinstance(p, placement.Streamed) for p in placed)
    for a, b in zip(_states(resident), _states(streamed), strict=True):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [t.history for t in resident] == [t.history for t in streamed]


def test_features_within_the_budget_stay_resident_and_placing_twice_is_a_no_op() -> None:
    X, y = _data()
    rows = InMemory(torch.from_numpy(X), torch.from_numpy(y))
    cpu = torch.device("cpu")
    resident = placement.place(rows, cpu)
    assert isinstance(resident, InMemory) and resident.X.data_ptr() == rows.X.data_ptr()
    streamed = placement.place(rows, cpu, limit=rows.X.nbytes)  # X fits, X and y do not
    assert isinstance(streamed, placement.Streamed) and placement.place(streamed, cpu) is streamed
    assert placement.budget(cpu) > 1 << 60  # the CPU's features are in memory already
    assert placement.current() == cpu  # outside any training_on block


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    return make_tree(tmp_path / "shapes", classes=("a", "b", "c"), per_class=10)


def test_fit_on_cpu_and_auto_give_the_same_heads_and_record_the_device(
    dataset: Path, tmp_path: Path
) -> None:
    runs = []
    for device in ("cpu", "auto"):
        run, result = fit(
            dataset,
            "test_efficientnet",
            head={"head": "mlp", "hidden": 8, "epochs": 3},
            grid={"lr": [1e-3, 1e-2]},
            holdout=0.2,
            runs_dir=tmp_path / "runs",
            extract_options=TINY_EXTRACT | {"cache_dir": tmp_path / "cache"},
            device=device,
        )
        request = json.loads((run.path / "run.json").read_text())["request"]
        expected = "cuda" if device == "auto" and torch.cuda.is_available() else "cpu"
        assert request["heads_device"].startswith(expected)
        runs.append(result)
    if not torch.cuda.is_available():
        a, b = (r.best_head.to_module().state_dict() for r in runs)
        assert all(torch.equal(a[k], b[k]) for k in a)


@NO_CUDA
def test_fit_on_cuda_without_cuda_is_refused_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(ArgumentError, match=r"^device cuda: CUDA is not available here"):
        fit(tmp_path / "nowhere", "test_efficientnet", device="cuda")


@NO_CUDA
def test_fit_device_cuda_through_the_console_script_is_one_line(
    dataset: Path, tmp_path: Path
) -> None:
    done = console_script(
        "fit", dataset, *flags(TINY), "--device", "cuda", columns=200, cwd=tmp_path
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --device cuda: CUDA"), done.stderr
