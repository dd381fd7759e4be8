"""predict and export, checked against what they did not compute themselves.

The oracle for an exported module is the run's head read back from disk, applied to the
embeddings the cache holds (``FittedHead.predict_proba``: numpy preprocessing, not the module the
export traces), and ``predict``'s rows for the same images. The exported files are loaded the way
a user loads them (onnxruntime, ``torch.jit.load``) and fed images prepared with the recipe in
the export's sidecar, through torchvision, not featpipe's own transform.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from conftest import TINY, TINY_EXTRACT, console_script, make_tree
from featpipe.cache.entry import load_features
from featpipe.data.bundled import prepare_dataset
from featpipe.data.transforms import ImageToUint8
from featpipe.errors import ArgumentError, FeatpipeError
from featpipe.finetuning.config import FinetuneConfig
from featpipe.finetuning.plan import make_plan
from featpipe.finetuning.stage import finish
from featpipe.finetuning.trainer import Trainer
from featpipe.fitting.stage import fit
from featpipe.runs.record import Run, load_run
from featpipe.use.export import export
from featpipe.use.predict import predict

LITE0 = {
    "weights": "offline",
    "precision": "fp32",
    "engine": "torch",
    "batch_size": 4,
    "workers": 0,
}


def recipe_images(files: list[Path], sidecar: dict) -> torch.Tensor:
    """uint8 [B, 3, H, W] as a user of the export prepares them: the sidecar's recipe, in
    torchvision (resize the shorter side, centre crop)."""
    recipe = sidecar["preprocess"]
    mode = InterpolationMode(recipe["interpolation"])
    out = []
    for path in files:
        image = Image.open(path).convert("RGB")
        image = TF.resize(image, recipe["resize_shorter_side_to"], interpolation=mode)
        image = TF.center_crop(image, recipe["center_crop"])
        out.append(torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1))
    return torch.stack(out)


def probabilities(rows: list[dict], files: list[Path], classes: list[str]) -> np.ndarray:
    by_path = {r["path"]: r for r in rows}
    return np.array([[by_path[str(f)][f"prob_{c}"] for c in classes] for f in files])


def exported_models(run: Run, tmp_path: Path) -> dict[str, Callable[[list[Path]], np.ndarray]]:
    """Export ONNX and TorchScript; each as its user runs it: files in, probabilities out."""
    import onnxruntime as ort

    models: dict[str, Callable[[list[Path]], np.ndarray]] = {}
    for fmt, name in (("onnx", "m.onnx"), ("torchscript", "m.pt")):
        target = tmp_path / name
        sidecar = export(run.path, fmt, target)
        assert json.loads(Path(f"{target}.json").read_text()) == sidecar
        assert sidecar["class_names"] == run.head().class_names
        assert sidecar["check"]["max_abs_diff"] <= 1e-4
        if fmt == "onnx":
            session = ort.InferenceSession(str(target), providers=["CPUExecutionProvider"])

            def run_onnx(files: list[Path], session=session, sidecar=sidecar) -> np.ndarray:
                images = recipe_images(files, sidecar).numpy()
                return session.run(None, {"images": images})[0]

            models[fmt] = run_onnx
        else:
            module = torch.jit.load(str(target))

            def run_script(files: list[Path], module=module, sidecar=sidecar) -> np.ndarray:
                result = module(recipe_images(files, sidecar))  # outside no_grad, as users do
                assert result.grad_fn is None and not result.requires_grad
                return result.numpy()

            models[fmt] = run_script
    return models


@pytest.fixture(scope="module")
def elpv_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Run, Path]:
    """A fit run on real ELPV cells with offline Lite0 weights; a head that standardises."""
    tmp = tmp_path_factory.mktemp("elpv_run")
    data = prepare_dataset("elpv", tmp / "elpv", per_class=5)
    run, _ = fit(
        data,
        "tf_efficientnet_lite0",
        head={"head": "logreg", "standardize": True},
        runs_dir=tmp / "runs",
        extract_options=LITE0 | {"cache_dir": tmp / "cache"},
    )
    return load_run(run.path), tmp


def test_exported_modules_agree_with_cached_features_and_predict_rows(
    elpv_run, photos, tmp_path
) -> None:
    run, _ = elpv_run
    cached = load_features(run.config["entries"][0]["entry"])
    root = Path(run.config["dataset_root"])
    files = [root / r for r in cached.relpath]
    head = run.head()  # read back from head/, not the object fit returned
    expected = head.predict_proba(cached.X)
    assert expected.shape == (len(files), 2)

    models = exported_models(run, tmp_path)
    predicted = probabilities(predict(files, run.path, device="cpu"), files, head.class_names)
    np.testing.assert_allclose(predicted, expected, atol=2e-4)
    for fmt, model in models.items():
        np.testing.assert_allclose(model(files), expected, atol=2e-4, err_msg=fmt)

    # Photos the run never saw: the exported files and predict agree on them too.
    extra = [photos["chelsea"], photos["coffee"], photos["astronaut"]]
    predicted = probabilities(predict(extra, run.path, device="cpu"), extra, head.class_names)
    for fmt, model in models.items():
        np.testing.assert_allclose(model(extra), predicted, atol=2e-4, err_msg=fmt)


@pytest.fixture(scope="module")
def finetune_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Run, torch.nn.Module, dict]:
    """A fine-tune run of offline Lite0 on real ELPV cells (every block trained one epoch), and
    the trained network as the trainer holds it in memory (best weights): the oracle."""
    tmp = tmp_path_factory.mktemp("finetune_run")
    data = prepare_dataset("elpv", tmp / "elpv", per_class=6)
    config = FinetuneConfig(
        backbone="tf_efficientnet_lite0",
        weights="offline",
        image_size=128,
        unfreeze="all",
        lr=3e-3,
        epochs=1,
        batch_size=8,
        augment=False,
        workers=0,
        device="cpu",
        precision="fp32",
    )
    trainer = Trainer(make_plan(data, config, runs_dir=tmp / "runs"))
    trainer.run()
    run, _ = finish(trainer, 0.0)
    return load_run(run.path), trainer.model.eval(), trainer.backbone.data_config


def test_a_finetune_run_predicts_and_exports_its_trained_network(
    finetune_run, photos, tmp_path
) -> None:
    run, model, data_config = finetune_run
    assert run.kind == "finetune" and (run.path / run.config["entries"][0]["state"]).is_file()
    files = sorted(Path(run.config["dataset_root"]).rglob("*.png"))[:6]
    files += [photos["chelsea"], photos["coffee"], photos["astronaut"]]
    models = exported_models(run, tmp_path)
    sidecar = json.loads((tmp_path / "m.onnx.json").read_text())
    images = recipe_images(files, sidecar).float() / 255
    mean = torch.tensor(data_config["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(data_config["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = torch.softmax(model((images - mean) / std), dim=1).numpy()
    head = run.head()
    predicted = probabilities(predict(files, run.path, device="cpu"), files, head.class_names)
    np.testing.assert_allclose(predicted, expected, atol=2e-4)
    for fmt, exported in models.items():
        np.testing.assert_allclose(exported(files), expected, atol=2e-4, err_msg=fmt)


def test_predict_with_tta_averages_the_trained_network_over_the_symmetries(finetune_run) -> None:
    run, model, data_config = finetune_run
    files = sorted(Path(run.config["dataset_root"]).rglob("*.png"))[:4]
    transform = ImageToUint8(data_config, draft=False)
    images = torch.stack([transform(str(f)) for f in files]).float() / 255
    mean = torch.tensor(data_config["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(data_config["std"]).view(1, 3, 1, 1)
    x = (images - mean) / std
    t = x.transpose(-2, -1)  # the 8 symmetries of the square, written out
    dihedral = [x, x.flip(-1), x.flip(-2), x.flip(-1, -2)]
    dihedral += [t, t.flip(-1), t.flip(-2), t.flip(-1, -2)]
    views = {"dihedral": dihedral, "hflip": [x, x.flip(-1)]}
    classes = run.head().class_names
    for tta, transformed in views.items():
        with torch.no_grad():
            expected = torch.stack([torch.softmax(model(v), 1) for v in transformed]).mean(0)
        rows = predict(files, run.path, device="cpu", tta=tta)
        np.testing.assert_allclose(probabilities(rows, files, classes), expected, atol=2e-4)
    # By default (run), predict does what the run's scores were measured with (its --tta,
    # unless that did worse on val: metrics.json's tta).
    assert run.config["request"]["tta"] == run.metrics.tta == "none"
    plain = probabilities(predict(files, run, device="cpu"), files, classes)
    np.testing.assert_allclose(plain, torch.softmax(model(x), 1).detach().numpy(), atol=2e-4)
    recorded = load_run(run.path)
    recorded.metrics = replace(recorded.metrics, tta="hflip")
    assert predict(files, recorded, device="cpu") == predict(files, run, device="cpu", tta="hflip")
    with pytest.raises(ArgumentError, match=r"^tta sideways: choose one of run, none, hflip"):
        predict(files, run, tta="sideways")


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    return make_tree(tmp_path / "shapes", classes=("a", "b", "c"), per_class=14)


def test_predict_agrees_with_fit_time_predictions(dataset, tmp_path) -> None:
    run, result = fit(
        dataset,
        "test_efficientnet",
        head={"head": "logreg"},
        runs_dir=tmp_path / "runs",
        extract_options=TINY_EXTRACT | {"cache_dir": tmp_path / "cache"},
    )
    from featpipe.extraction.stage import extract

    cached = extract(dataset, cache_dir=tmp_path / "cache", **TINY).load()
    rows = predict([dataset], run.path, tmp_path / "p.csv", device="cpu")
    by_path = {Path(r["path"]).relative_to(dataset).as_posix(): r for r in rows}
    expected = result.best_head.predict_proba(cached.X)
    for relpath, probs in zip(cached.relpath, expected, strict=True):
        got = [by_path[relpath][f"prob_{c}"] for c in ("a", "b", "c")]
        np.testing.assert_allclose(got, probs, atol=1e-4)
        assert by_path[relpath]["prediction"] == "abc"[int(np.argmax(probs))]
    assert (tmp_path / "p.csv").read_text().startswith("path,prediction,confidence,prob_a")


def test_export_refuses_an_unknown_format(elpv_run, tmp_path) -> None:
    run, _ = elpv_run
    with pytest.raises(ValueError, match="fmt tflite: choose one of torchscript, onnx, openvino"):
        export(run.path, "tflite", tmp_path / "m.tflite")
    assert not (tmp_path / "m.tflite").exists()
    with pytest.raises(ValueError, match=r"out .*m.ir: an OpenVINO IR is an .xml file"):
        export(run.path, "openvino", tmp_path / "m.ir")


def test_openvino_export_agrees_with_cached_features_as_its_user_runs_it(
    elpv_run, tmp_path
) -> None:
    from featpipe.runtime.openvino_engine import openvino_core

    run, _ = elpv_run
    cached = load_features(run.config["entries"][0]["entry"])
    root = Path(run.config["dataset_root"])
    files = [root / r for r in cached.relpath]
    target = tmp_path / "m.xml"
    sidecar = export(run.path, "openvino", target)
    assert sidecar["check"]["max_abs_diff"] <= 1e-4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.bin", "m.xml", "m.xml.json"]
    # OpenVINO's own default precision is bf16 on a CPU that has it: the sidecar says what the
    # check ran with, and its user passes it on.
    assert sidecar["compile_config"] == {"INFERENCE_PRECISION_HINT": "f32"}
    # The process's one Core: Cores released out of order leave OpenVINO 2026.4's signal stack
    # dangling (see featpipe.runtime.openvino_engine.openvino_core); a user's process has one
    # anyway.
    model = openvino_core().compile_model(str(target), "CPU", sidecar["compile_config"])
    got = model({0: recipe_images(files, sidecar).numpy()})[0]
    np.testing.assert_allclose(got, run.head().predict_proba(cached.X), atol=2e-4)


def test_predict_runs_the_engine_that_computed_the_features(
    dataset, tmp_path, tiny_openvino, monkeypatch
) -> None:
    """A run fitted on OpenVINO's bf16 rows predicts with OpenVINO: its arithmetic is in the
    key, and torch's bf16 is another. (On a CPU without bf16 the bf16 hint computes fp32,
    which does not change what this checks: the engine the rows come from.)"""
    from featpipe.extraction.stage import extract
    from featpipe.runtime import tuning
    from featpipe.use.predict import embed, load_pipeline

    monkeypatch.setattr(tuning, "openvino_has_bf16", lambda: True)
    options = TINY_EXTRACT | {"cache_dir": tiny_openvino(tmp_path / "cache")}
    options |= {"engine": "openvino", "precision": "bf16"}
    run, _ = fit(dataset, "test_efficientnet", head={"head": "logreg"},
                 runs_dir=tmp_path / "runs", extract_options=options)  # fmt: skip
    pipeline = load_pipeline(run)
    assert (pipeline.engines, pipeline.precisions) == (["openvino"], ["bf16"])
    cached = extract(dataset, backbone="test_efficientnet", **options).load()
    X, reasons = embed(pipeline, [dataset / p for p in cached.relpath], device="cpu")
    assert not any(reasons) and (run.path / ".openvino").is_dir()  # converted into the run
    np.testing.assert_allclose(X, cached.X, rtol=1e-5, atol=1e-6)


def test_predict_on_a_run_without_a_head_names_the_run(elpv_run, tmp_path) -> None:
    """An old fine-tune run (format 1) had no head/: a one-line error, not a traceback."""
    run, _ = elpv_run
    import shutil

    old = tmp_path / "old"
    shutil.copytree(run.path, old)
    shutil.rmtree(old / "head")
    with pytest.raises(FeatpipeError, match="has no saved head"):
        predict([old], old, device="cpu")


def test_cli_export_and_predict_errors_are_one_line(tmp_path) -> None:
    """Through the console script: a bad format names --format; a folder that is no run says so."""
    for args, says in (
        (["export", str(tmp_path), "--format", "tflite"], "--format tflite: choose one of"),
        (["predict", str(tmp_path), "--run", str(tmp_path / "nope")], "is not a featpipe run"),
    ):
        done = console_script(*args, timeout=120)
        assert done.returncode == 2, done.stderr
        assert done.stderr.startswith("error: ") and says in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1


def test_predict_decodes_like_the_features_of_its_run(tmp_path: Path) -> None:
    """A run fitted on tensor-decoded features embeds new images with the tensor decoder: its
    rows for the training images are the cached ones, not the PIL path's."""
    import skimage.data

    from featpipe.extraction.stage import extract
    from featpipe.use.predict import embed, load_pipeline

    data = tmp_path / "photos"
    for c, names in enumerate((("chelsea", "coffee"), ("astronaut", "rocket"))):
        for name in names:
            for flip in range(3):
                path = data / f"class_{c}" / f"{name}_{flip}.jpg"
                path.parent.mkdir(parents=True, exist_ok=True)
                photo = getattr(skimage.data, name)()[:, :: -1 if flip else 1][flip * 9 :]
                Image.fromarray(photo).convert("RGB").save(path, quality=90)
    options = TINY_EXTRACT | {"cache_dir": tmp_path / "cache", "decode": "tensor"}
    run, _ = fit(data, "test_efficientnet", head={"head": "logreg"},
                 runs_dir=tmp_path / "runs", extract_options=options)  # fmt: skip
    cached = extract(data, cache_dir=tmp_path / "cache", decode="tensor", **TINY).load()
    pipeline = load_pipeline(run)
    assert pipeline.backbones[0].spec.decode == "tensor"
    files = [data / p for p in cached.relpath]
    X, reasons = embed(pipeline, files, device="cpu")
    assert not any(reasons)
    # PIL's pixels move these rows by ~1e-5 (features ~2e-2): the bar is far below that.
    np.testing.assert_allclose(X, cached.X, rtol=0, atol=1e-6)
