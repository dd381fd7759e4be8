"""Heads behind one interface: ``fit(X, y, X_val, y_val)``, ``predict``, ``predict_proba``.

Whatever trained it (the stacked torch trainer, or a scikit-learn estimator), a fitted head is
kept as a standard ``nn.Module`` after a :class:`~featpipe.heads.preprocess.Preprocessor`: a linear
scikit-learn model becomes an ``nn.Linear``, k-NN a cosine-similarity vote over its stored
bank. So every head predicts, saves (safetensors + JSON, no pickle) and exports the same way,
and what was evaluated is exactly what is saved.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn

from featpipe.errors import ArgumentError, DataError, StorageError
from featpipe.heads.config import HeadConfig
from featpipe.heads.metrics import r2
from featpipe.heads.paths import logistic_path, ridge_classifier_path, ridge_path
from featpipe.heads.preprocess import Preprocessor
from featpipe.heads.stacked import train_torch_heads
from featpipe.heads.tensorfile import TensorBlocks, write_safetensors
from featpipe.heads.train_data import TrainData
from featpipe.heads.views import with_view_rows
from featpipe.protocols.knn import UNIFORM, KNNSweep, knn_sweep, vote

HEAD_FORMAT = 1


class CosineKNN(nn.Module):
    """k-NN with cosine similarity over a stored bank of unit rows.

    The vote is DINOv2's (:mod:`featpipe.protocols.knn`): neighbour j weighs
    ``softmax(sim / temperature)_j``; ``temperature`` 0 is the uniform vote (each of the k
    neighbours weighs 1/k, scikit-learn's rule). Regression averages the neighbours' targets
    with the same weights. ``normalized``: the bank's rows are unit already (a saved head, or a
    bank shared by a sweep's heads), so it is kept as it is rather than copied.
    """

    def __init__(
        self,
        bank: torch.Tensor,
        targets: torch.Tensor,
        k: int,
        n_classes: int,
        temperature: float = 0.0,
        *,
        normalized: bool = False,
    ) -> None:
        super().__init__()
        unit = bank if normalized else nn.functional.normalize(bank.float(), dim=1)
        self.register_buffer("bank", unit)
        self.register_buffer("targets", targets)
        self.k, self.n_classes, self.temperature = k, n_classes, float(temperature)

    @property
    def vote_temperature(self) -> float:
        """The temperature of :func:`~featpipe.protocols.knn.vote` (UNIFORM for 0)."""
        return UNIFORM if self.temperature == 0 else self.temperature

    @property
    def size(self) -> int:
        """How many rows the bank holds."""
        return self.bank.shape[0]

    @property
    def width(self) -> int:
        """The neighbours that vote: k, or the whole bank when it is smaller."""
        return min(self.k, self.size)

    @property
    def source(self) -> object:
        """What the neighbour search reads: heads over one source (and one preprocessing)
        share one search (:func:`decision_functions`)."""
        return self.bank

    def bank_blocks(self) -> Iterable[tuple[np.ndarray, np.ndarray]]:
        """The bank as ``(unit rows, labels)`` blocks, what :func:`knn_sweep` searches."""
        return [(self.bank.numpy(), self.targets.numpy())]

    def nearest(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each row's ``width`` most similar bank rows: (similarities, bank row numbers)."""
        top = (nn.functional.normalize(x, dim=1) @ self.bank.t()).topk(self.width, dim=1)
        return top.values, top.indices

    def saved_state(self) -> dict[str, torch.Tensor | TensorBlocks]:
        """The tensors a saved head holds; a bank on disk gives its blocks instead
        (:class:`~featpipe.heads.tensorfile.TensorBlocks`)."""
        return dict(self.state_dict())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        similarities, rows = self.nearest(x)
        if self.n_classes == 0:  # regression: the neighbours' targets, weighted as they vote
            values = self.targets[rows].float()
            if math.isinf(self.vote_temperature):
                return values.mean(dim=1, keepdim=True)
            weights = torch.softmax(similarities / self.vote_temperature, dim=1)
            return (weights * values).sum(dim=1, keepdim=True)
        return vote(similarities, self.targets[rows], self.n_classes, self.vote_temperature)


def knn_modules(
    configs: list[HeadConfig], X: np.ndarray, y: np.ndarray, n_classes: int
) -> list[nn.Module]:
    """k-NN heads that differ only in ``k`` and ``temperature``, over one shared bank (a grid
    of them holds the training rows once)."""
    targets = torch.as_tensor(y, dtype=torch.long if n_classes else torch.float32)
    bank = nn.functional.normalize(torch.from_numpy(X).float(), dim=1)
    return [
        CosineKNN(bank, targets, c.k, n_classes, c.temperature, normalized=True) for c in configs
    ]


def _linear(coef: np.ndarray, intercept: np.ndarray | float) -> nn.Linear:
    """A scikit-learn linear decision function as ``nn.Linear``; binary → two logits [0, z]."""
    coef = np.atleast_2d(coef)
    intercept = np.atleast_1d(np.asarray(intercept, dtype=np.float64))
    if coef.shape[0] == 1 and intercept.shape[0] == 1:
        coef = np.vstack([np.zeros_like(coef), coef])
        intercept = np.concatenate([[0.0], intercept])
    layer = nn.Linear(coef.shape[1], coef.shape[0])
    layer.weight.data = torch.tensor(np.ascontiguousarray(coef), dtype=torch.float32)
    layer.bias.data = torch.as_tensor(intercept, dtype=torch.float32)
    return layer


def _regression_linear(coef: np.ndarray, intercept: float) -> nn.Linear:
    layer = nn.Linear(coef.shape[-1], 1)
    layer.weight.data = torch.as_tensor(np.atleast_2d(coef), dtype=torch.float32)
    layer.bias.data = torch.as_tensor([float(intercept)], dtype=torch.float32)
    return layer


def fit_sklearn(config: HeadConfig, X: np.ndarray, y: np.ndarray, n_classes: int) -> nn.Module:
    """Fit a scikit-learn head on preprocessed features and convert it to a module."""
    from sklearn.linear_model import LogisticRegression, Ridge, RidgeClassifier
    from sklearn.svm import LinearSVC

    weight = None if config.class_weight == "none" else "balanced"
    if config.head == "knn":
        return knn_modules([config], X, y, n_classes)[0]
    if n_classes == 0:
        if config.head != "ridge":
            raise ArgumentError(
                "head",
                f"{config.head} is a classifier; for regression use linear, mlp, ridge or knn",
            )
        model = Ridge(alpha=config.alpha).fit(X, y)
        return nn.Sequential(_regression_linear(model.coef_, model.intercept_))
    if config.head == "logreg":
        model = LogisticRegression(C=config.C, max_iter=2000, class_weight=weight)
    elif config.head == "linearsvc":
        model = LinearSVC(C=config.C, class_weight=weight, max_iter=5000)
    else:
        model = RidgeClassifier(alpha=config.alpha, class_weight=weight)
    model.fit(X, y)
    layer = _linear(model.coef_, model.intercept_)
    return nn.Sequential(_expand_classes(layer, model.classes_, n_classes))


def fit_sklearn_path(
    configs: list[HeadConfig], X: np.ndarray, y: np.ndarray, n_classes: int
) -> list[nn.Module]:
    """Ridge configs differing only in ``alpha``, logreg configs only in ``C``, or k-NN configs
    only in ``k`` and ``temperature``, in one go.

    Ridge solves every ``alpha`` from one eigendecomposition, logistic regression runs L-BFGS
    warm-started along ``C`` (:mod:`featpipe.heads.paths`), k-NN heads share one bank (and
    :func:`decision_functions` one neighbour search); each module is what :func:`fit_sklearn`
    gives for its config alone (tests hold them to it).
    """
    if configs[0].head == "knn":
        return knn_modules(configs, X, y, n_classes)
    balanced = configs[0].class_weight == "balanced"
    if n_classes == 0:
        if configs[0].head != "ridge":  # the single fit's message
            return [fit_sklearn(configs[0], X, y, n_classes)]
        return linear_modules(ridge_path(X, y[:, None], [c.alpha for c in configs]), None, 0)
    if configs[0].head == "ridge":
        solutions, classes = ridge_classifier_path(X, y, [c.alpha for c in configs], balanced)
    else:
        solutions, classes = logistic_path(X, y, [c.C for c in configs], balanced)
    return linear_modules(solutions, classes, n_classes)


def linear_modules(
    solutions: list[tuple[np.ndarray, np.ndarray]], classes: np.ndarray | None, n_classes: int
) -> list[nn.Module]:
    """Linear solutions ``(coef, intercept)`` in scikit-learn's shapes as head modules.

    ``classes``: the classes the solutions score (``n_classes`` 0 means regression).
    """
    if n_classes == 0:
        return [nn.Sequential(_regression_linear(coef, b[0])) for coef, b in solutions]
    return [
        nn.Sequential(_expand_classes(_linear(coef, b), classes, n_classes))
        for coef, b in solutions
    ]


def path_groups(configs: list[HeadConfig]) -> list[list[int]]:
    """Indices of scikit-learn configs that one path fits: ridge along alpha, logreg along C,
    k-NN along k and temperature.

    Members agree in every other option (the seed aside: these heads do not use it); every
    other config is a group of its own.
    """
    groups: dict[tuple, list[int]] = {}
    for i, config in enumerate(configs):
        along = {"ridge": ("alpha",), "logreg": ("C",), "knn": ("k", "temperature")}.get(
            config.head
        )
        if along is None:
            key: tuple = (i,)
        else:
            key = tuple((k, v) for k, v in config.params().items() if k not in (*along, "seed"))
        groups.setdefault(key, []).append(i)
    return list(groups.values())


def _expand_classes(layer: nn.Linear, present: np.ndarray, n_classes: int) -> nn.Linear:
    """Give classes absent from a (few-shot) training set a logit of −inf-like size."""
    if len(present) == n_classes:
        return layer
    full = nn.Linear(layer.in_features, n_classes)
    full.weight.data.zero_()
    full.bias.data.fill_(-1e4)
    full.weight.data[present] = layer.weight.data
    full.bias.data[present] = layer.bias.data
    return full


# --------------------------------------------------------------------------------------------
# Saving modules without pickle: an architecture spec (JSON) plus a state dict (safetensors)


def _spec(module: nn.Module) -> list[list[Any]]:
    if isinstance(module, CosineKNN):
        return [["CosineKNN", module.k, module.n_classes, module.temperature]]
    spec: list[list[Any]] = []
    for layer in module.children():
        if isinstance(layer, nn.Linear):
            spec.append(["Linear", layer.in_features, layer.out_features])
        elif isinstance(layer, nn.BatchNorm1d):
            spec.append(["BatchNorm1d", layer.num_features])
        elif isinstance(layer, nn.ReLU):
            spec.append(["ReLU"])
        elif isinstance(layer, nn.Dropout):
            spec.append(["Dropout", layer.p])
        else:
            raise TypeError(f"cannot describe layer {layer!r}")
    return spec


def _build(spec: list[list[Any]], state: dict[str, torch.Tensor]) -> nn.Module:
    if spec[0][0] == "CosineKNN":  # heads saved before the temperature voted uniformly
        k, n_classes, temperature = (*spec[0][1:], 0.0)[:3]
        bank, targets = state["bank"], state["targets"]
        return CosineKNN(bank, targets, k, n_classes, temperature, normalized=True)
    kinds = {
        "Linear": nn.Linear,
        "BatchNorm1d": nn.BatchNorm1d,
        "ReLU": nn.ReLU,
        "Dropout": nn.Dropout,
    }
    module = nn.Sequential(*(kinds[name](*args) for name, *args in spec))
    module.load_state_dict(state)
    return module.eval()


@dataclass
class FittedHead:
    """A trained head: preprocessing, module, and what it was trained on."""

    def __repr__(self) -> str:
        out = f"{len(self.class_names)} classes" if self.task != "regression" else "regression"
        return (
            f"FittedHead({self.config.label()}, {self.n_features} features → {out}, "
            f"fitted in {self.fit_seconds:.2f} s)"
        )

    config: HeadConfig
    preprocessor: Preprocessor
    module: nn.Module
    class_names: list[str]
    task: str
    n_features: int
    history: dict[str, list[float]] = field(default_factory=dict)
    best_epoch: int = 0
    fit_seconds: float = 0.0

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        """Raw outputs: logits (torch, linear models), vote shares (k-NN) or values."""
        [out] = decision_functions([self], X)
        return out

    def transform(self, X: np.ndarray) -> np.ndarray:
        """``X`` preprocessed as this head reads it (the dimension checked)."""
        if X.shape[1] != self.n_features:
            raise DataError(
                f"features have dimension {X.shape[1]}, this head was fitted on "
                f"{self.n_features}: use the backbone the head was trained with"
            )
        return self.preprocessor.transform(X)

    @torch.no_grad()
    def module_outputs(self, Z: np.ndarray) -> np.ndarray:
        """The module's outputs on preprocessed rows, 8192 at a time."""
        T = torch.from_numpy(Z)
        self.module.eval()
        return torch.cat([self.module(T[s : s + 8192]) for s in range(0, len(T), 8192)]).numpy()

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        if self.task == "regression":
            raise DataError(
                "predict_proba is for classification heads; this one regresses: use predict"
            )
        out = self.decision_function(X)
        if isinstance(self.module, CosineKNN):
            return out
        # In float64: probabilities near 1 stay distinct where the logits are (ranking intact).
        return torch.softmax(torch.from_numpy(out).double(), dim=1).numpy()

    def predict(self, X: np.ndarray) -> np.ndarray:
        out = self.decision_function(X)
        return out[:, 0] if self.task == "regression" else out.argmax(axis=1)

    def score(self, X: np.ndarray, y: np.ndarray) -> float:
        """Accuracy for classification, R² for regression (as scikit-learn's ``score``)."""
        pred = self.predict(X)
        return r2(y, pred) if self.task == "regression" else float(np.mean(pred == y))

    def to_module(self) -> nn.Module:
        """Preprocessing and head as one module (features in, raw outputs out)."""
        return nn.Sequential(self.preprocessor.to_module(), self.module).eval()

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        module = self.module
        own = module.saved_state() if isinstance(module, CosineKNN) else module.state_dict()
        state = {f"head.{k}": v for k, v in own.items()}
        state |= {f"pre.{k}": np.asarray(v) for k, v in self.preprocessor.arrays.items()}
        write_safetensors(folder / "head.safetensors", state)
        meta = {
            "format": HEAD_FORMAT,
            "config": self.config.to_dict(),
            "spec": _spec(self.module),
            "class_names": self.class_names,
            "task": self.task,
            "n_features": self.n_features,
            "preprocess": {
                "standardize": self.preprocessor.standardize,
                "l2norm": self.preprocessor.l2norm,
                "pca": self.preprocessor.pca,
            },
            "best_epoch": self.best_epoch,
            "fit_seconds": self.fit_seconds,
            "history": self.history,
        }
        (folder / "head.json").write_text(json.dumps(meta, indent=1))

    @classmethod
    def load(cls, folder: Path) -> FittedHead:
        try:
            meta = json.loads((folder / "head.json").read_text())
            tensors = load_file(str(folder / "head.safetensors"))
        except (OSError, ValueError) as exc:
            raise StorageError(f"cannot read a saved head in {folder}: {exc}") from None
        if meta.get("format", 0) > HEAD_FORMAT:
            raise StorageError(
                f"head in {folder} was saved by a newer featpipe (format {meta['format']}): "
                "upgrade featpipe to load it"
            )
        pre = Preprocessor(**meta["preprocess"])
        pre.arrays = {k[4:]: v.numpy() for k, v in tensors.items() if k.startswith("pre.")}
        head_state = {k[5:]: v for k, v in tensors.items() if k.startswith("head.")}
        return cls(
            config=HeadConfig.from_dict(meta["config"]),  # every recorded shape, old and new
            preprocessor=pre,
            module=_build(meta["spec"], head_state),
            class_names=meta["class_names"],
            task=meta["task"],
            n_features=meta["n_features"],
            history=meta["history"],
            best_epoch=meta["best_epoch"],
            fit_seconds=meta["fit_seconds"],
        )


def decision_functions(heads: list[FittedHead], X: np.ndarray) -> Iterator[np.ndarray]:
    """Every head's raw outputs on ``X``, head by head.

    k-NN classifiers over one bank behind one preprocessing (a sweep over ``k`` and
    ``temperature``, see :func:`knn_modules`) share one neighbour search of the largest k,
    in bounded-memory blocks (:func:`featpipe.protocols.knn.knn_sweep`): every (k, T) is voted
    from it. Each group's search is made when its first head is reached.
    """
    widths: dict[tuple[int, int], int] = {}
    for head in heads:
        key = _knn_bank(head)
        if key is not None:
            widths[key] = max(widths.get(key, 0), head.module.width)
    searches: dict[tuple[int, int], KNNSweep] = {}
    for head in heads:
        key = _knn_bank(head)
        if key is None:
            yield head.module_outputs(head.transform(X))
            continue
        module = head.module
        if key not in searches:
            Z = head.transform(X)
            searches[key] = knn_sweep(
                Z, module.bank_blocks(), module.n_classes, [widths[key]], [UNIFORM]
            )
        scores = searches[key].scores(module.width, module.vote_temperature)
        yield scores.astype(np.float32, copy=False)


def _knn_bank(head: FittedHead) -> tuple[int, int] | None:
    """What k-NN classifiers sharing one search have in common (their preprocessing and bank),
    or None for every other head."""
    module = head.module
    if not isinstance(module, CosineKNN) or module.n_classes == 0:
        return None
    return id(head.preprocessor), id(module.source)


def _timed_sklearn(
    configs: list[HeadConfig], X: np.ndarray, y: np.ndarray, n_out: int
) -> tuple[list[nn.Module], float]:
    start = time.perf_counter()
    if len(configs) == 1:
        modules = [fit_sklearn(configs[0], X, y, n_out)]
    else:
        modules = fit_sklearn_path(configs, X, y, n_out)
    return modules, time.perf_counter() - start


def fit_heads(configs: list[HeadConfig], data: TrainData, n_jobs: int = -1) -> list[FittedHead]:
    """Fit many heads: torch heads stacked per group, scikit-learn heads in parallel (joblib).

    ``data.views``: augmented views of the rows of ``data.X`` (N × K × D). Torch heads draw
    their training rows from them (:mod:`featpipe.heads.views`); scikit-learn heads add every
    view as an extra row. Preprocessing is still fitted on ``data.X`` alone.

    Ridge configs that differ only in ``alpha`` (logreg: only in ``C``) are fitted as one
    regularisation path (:func:`fit_sklearn_path`).

    Preprocessing is fitted once per distinct (standardize, l2norm, pca) on ``data.X`` (train
    only).
    """
    from joblib import Parallel, delayed

    n_out, dim = data.n_out, data.X.shape[1]
    fitted: list[FittedHead | None] = [None] * len(configs)
    by_pre: dict[tuple, list[int]] = {}
    for i, c in enumerate(configs):
        by_pre.setdefault(c.preprocessing(), []).append(i)
    for (standardize, l2norm, pca), members in by_pre.items():
        pre = Preprocessor(standardize, l2norm, pca).fit(data.X)
        seen = data.transformed(pre.transform)
        torch_ids = [i for i in members if configs[i].is_torch]
        other_ids = [i for i in members if not configs[i].is_torch]
        for i, t in zip(
            torch_ids, train_torch_heads([configs[i] for i in torch_ids], seen), strict=True
        ):
            fitted[i] = FittedHead(
                configs[i],
                pre,
                t.module,
                data.class_names,
                data.task,
                dim,
                t.history,
                t.best_epoch,
                t.seconds,
            )

        # Ridge along alpha and logreg along C are one path each; a path's time is shared.
        groups = [[other_ids[j] for j in g] for g in path_groups([configs[i] for i in other_ids])]
        Zs, ys = (
            (seen.X, seen.y)
            if seen.views is None or not other_ids
            else with_view_rows(seen.X, seen.y, seen.views.X)
        )
        jobs = n_jobs if len(groups) > 1 else 1
        results = Parallel(n_jobs=jobs, prefer="threads")(
            delayed(_timed_sklearn)([configs[i] for i in group], Zs, ys, n_out) for group in groups
        )
        for group, (modules, seconds) in zip(groups, results, strict=True):
            for i, module in zip(group, modules, strict=True):
                fitted[i] = FittedHead(
                    configs[i],
                    pre,
                    module,
                    data.class_names,
                    data.task,
                    dim,
                    fit_seconds=seconds / len(group),
                )
    return [f for f in fitted if f is not None]
