"""What makes fine-tuning on small data work, option by option: random symmetries, erasing,
mixup/CutMix, the EMA of the weights, the training and evaluation size (progressive resizing,
ViT position embeddings), test-time augmentation; resumable bit for bit; one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from conftest import TINY_FINETUNE, console_script, kill_after_first_checkpoint, make_tree
from featpipe.cli.app import main
from featpipe.data.transforms import ImageToUint8
from featpipe.errors import ArgumentError
from featpipe.finetuning.checkpoint import Checkpointer
from featpipe.finetuning.config import FinetuneConfig
from featpipe.finetuning.plan import make_plan
from featpipe.finetuning.stage import finetune
from featpipe.finetuning.trainer import Evaluation, Trainer, better
from featpipe.runs.record import load_run
from featpipe.use.predict import run_tta

BASE = TINY_FINETUNE | {"workers": 0}
# Every addition at once (what a kill and resume must replay exactly).
EVERYTHING = BASE | {
    "epochs": 4,
    "augment": True,
    "unfreeze": "all",
    "auto_augment": "rand-m9-mstd0.5-inc1",
    "rot90": True,
    "random_erasing": 0.5,
    "mixup": 0.4,
    "cutmix": 1.0,
    "ema": 0.9,
    "progressive": "0:24,2:32",
    "tta": "hflip",
}


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return make_tree(tmp_path / "imgs", classes=("a", "b", "c"), per_class=7)


def trainer_for(data: Path, out: Path, **options) -> Trainer:
    return Trainer(make_plan(data, FinetuneConfig(**BASE | options), out))


def symmetries(x: torch.Tensor) -> list[torch.Tensor]:
    """The 8 symmetries of a square image, written out (transposes and flips)."""
    t = x.transpose(-2, -1)
    return [x, x.flip(-1), x.flip(-2), x.flip(-1, -2), t, t.flip(-1), t.flip(-2), t.flip(-1, -2)]


def test_rot90_trains_on_exactly_the_eight_symmetries_of_each_image(data, tmp_path) -> None:
    trainer = trainer_for(data, tmp_path / "run", rot90=True)
    path = str(data / trainer.plan.train[0].relpath)
    reference = ImageToUint8(trainer.backbone.data_config, draft=False)(path)
    allowed = {s.numpy().tobytes() for s in symmetries(reference)}
    transform = trainer.train_transform(0)
    seen = set()
    for seed in range(100):
        torch.manual_seed(seed)
        seen.add(transform(path).numpy().tobytes())
    assert seen == allowed


def test_drop_path_is_timms_stochastic_depth_in_training_only(data, tmp_path) -> None:
    # test_convnext: every block has a residual branch to skip (test_efficientnet has none)
    convnext = {"backbone": "test_convnext", "unfreeze": "all"}
    trainer = trainer_for(data, tmp_path / "run", drop_path=0.2, **convnext)
    plain = trainer_for(data, tmp_path / "plain", **convnext)
    reference = timm.create_model("test_convnext", drop_path_rate=0.2)

    def rates(module: torch.nn.Module) -> list[float]:
        return [m.drop_prob for m in module.modules() if type(m).__name__ == "DropPath"]

    # timm's builder spreads the rate over the blocks, up to 0.2 for the last
    assert rates(trainer.model) == rates(reference) and len(set(rates(reference))) > 2
    assert rates(plain.model) == [] and max(rates(reference)) == pytest.approx(0.2)
    x = torch.randn(4, 3, 32, 32)
    trainer.model.eval(), plain.model.eval()
    with torch.no_grad():  # evaluation is the network without it, to the bit
        assert torch.equal(trainer.model(x), plain.model(x))
        trainer.model.train()
        torch.manual_seed(0)
        first = trainer.model(x)
        assert not torch.equal(first, trainer.model(x))  # blocks skipped at random
        torch.manual_seed(0)
        assert torch.equal(first, trainer.model(x))  # by torch's generator, seeded per epoch


def test_a_resumed_run_with_drop_path_is_bit_identical(data, tmp_path) -> None:
    options = BASE | {"backbone": "test_convnext", "unfreeze": "all", "epochs": 3}
    config = FinetuneConfig(**options | {"drop_path": 0.3})
    whole_run, whole = finetune(data, config, tmp_path / "whole")
    assert not Trainer(make_plan(data, config, tmp_path / "resumed")).run(stop_after=1)
    resumed_run, resumed = finetune(data, config, tmp_path / "resumed")
    assert resumed.history["train_loss"] == whole.history["train_loss"]
    a = load_file(str(whole_run.path / "backbone.safetensors"))
    b = load_file(str(resumed_run.path / "backbone.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    _, plain = finetune(data, FinetuneConfig(**options), tmp_path / "plain")
    assert plain.history["train_loss"] != whole.history["train_loss"]  # it did act


def test_drop_path_on_a_network_without_stochastic_depth_is_one_line(data, tmp_path) -> None:
    args = ["finetune", data, "-b", "tv/resnet18", "-w", "none", "--drop-path", "0.1"]
    proc = console_script(*args, "--out", tmp_path / "run")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "--drop-path 0.1: tv/resnet18 has no stochastic depth" in proc.stderr


def test_random_erasing_erases_one_rectangle_at_rate_p(data, tmp_path) -> None:
    trainer = trainer_for(data, tmp_path / "run", random_erasing=0.25)
    x = torch.full((400, 3, 32, 32), 3.0)  # normalised pixels far from the noise it fills with
    y = torch.zeros(400, dtype=torch.long)
    torch.manual_seed(0)
    __import__("random").seed(0)
    out, target = trainer.augment_batch(x.clone(), y)
    assert torch.equal(target, y)  # erasing leaves the labels alone
    erased = 0
    for image in out:
        changed = (image != 3.0).any(0)
        if not changed.any():
            continue
        erased += 1
        rows, cols = changed.any(1).nonzero(), changed.any(0).nonzero()
        box = changed[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        assert box.all() and int(changed.sum()) == box.numel()  # one filled rectangle
        assert (image != 3.0).all(0).sum() == changed.sum()  # in every channel
        assert 0.02 * 32 * 32 * 0.5 <= box.numel() <= 32 * 32 / 3 * 1.5  # timm's area range
    assert 0.17 <= erased / 400 <= 0.33  # p = 0.25 (binomial sd 0.022; seeded)


@pytest.mark.parametrize("smoothing", [0.0, 0.3])
def test_mixup_mixes_images_and_one_hot_targets_with_the_drawn_lambda(
    smoothing, data, tmp_path
) -> None:
    trainer = trainer_for(data, tmp_path / "run", mixup=0.4, smoothing=smoothing)
    x = torch.randn(9, 3, 32, 32)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2])
    np.random.seed(7)
    np.random.rand()  # timm draws whether to mix, then lambda from Beta(alpha, alpha)
    lam = float(np.random.beta(0.4, 0.4))
    np.random.seed(7)
    mixed, target = trainer.augment_batch(x.clone(), y)
    even, ye = x[:8], y[:8]  # an odd batch is mixed without its last image
    torch.testing.assert_close(mixed, lam * even + (1 - lam) * even.flip(0))
    one_hot = F.one_hot(ye, 3).float() * (1 - smoothing) + smoothing / 3  # smoothed first
    torch.testing.assert_close(target, lam * one_hot + (1 - lam) * one_hot.flip(0))


def test_cutmix_pastes_a_box_and_weights_the_targets_by_its_area(data, tmp_path) -> None:
    trainer = trainer_for(data, tmp_path / "run", cutmix=1.0)
    x = torch.randn(8, 3, 32, 32)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    np.random.seed(3)
    mixed, target = trainer.augment_batch(x.clone(), y)
    pasted = (mixed != x).any(1)[0]  # where image 0 took image 7's pixels
    assert torch.equal(mixed[0][:, pasted], x[7][:, pasted])
    rows, cols = pasted.any(1).nonzero(), pasted.any(0).nonzero()
    assert pasted[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1].all()  # a box
    lam = 1 - float(pasted.sum()) / (32 * 32)
    torch.testing.assert_close(target[0], torch.tensor([lam, 1 - lam, 0.0]))  # labels 0 and 1


def test_label_smoothing_trains_on_softened_targets_and_scores_on_plain_ones(
    data, tmp_path, losses
) -> None:
    """Training steps take cross-entropy against 1 - s + s/K on the label and s/K elsewhere;
    val and test losses (what --select-by loss compares) stay the plain cross-entropy."""
    calls = losses
    trainer = trainer_for(data, tmp_path / "run", smoothing=0.2, epochs=1, unfreeze="all")
    trainer.run()
    training = [c for c in calls if c[2]]
    assert training and len(training) < len(calls)  # steps, then the val pass
    for out, y, grad, value in calls:
        target = F.one_hot(y, 3).float() * (0.8 if grad else 1.0) + (0.2 / 3 if grad else 0.0)
        expected = -(target * out.log_softmax(1)).sum(1).mean()
        torch.testing.assert_close(value, expected)


def test_ema_is_the_exponential_average_of_the_weights_and_is_checkpointed(data, tmp_path):
    trainer = trainer_for(data, tmp_path / "run", unfreeze="all", ema=0.8)
    state = lambda model: {k: v.detach().clone() for k, v in model.state_dict().items()}  # noqa: E731
    expected = state(trainer.model)  # w_0
    steps: list[int] = []

    def after_step(epoch: int, done: int, total: int, seconds: float) -> None:
        steps.append(done)
        for name, value in trainer.model.state_dict().items():  # w_t: e = 0.8 e + 0.2 w_t
            if value.is_floating_point():
                expected[name] = 0.8 * expected[name] + 0.2 * value.detach()
            else:
                expected[name] = value.detach().clone()

    stage = trainer.enter(0, None)
    trainer.train_epoch(0, stage, progress=after_step)
    assert len(steps) == 2  # 15 training images, batch 8
    ema = trainer.ema.module.state_dict()
    for name, value in expected.items():
        torch.testing.assert_close(ema[name], value, rtol=1e-5, atol=1e-6)
    raw = trainer.model.state_dict()
    assert any(not torch.equal(ema[k], raw[k]) for k in raw)  # an average, not a copy
    trainer.state.epoch = 1
    trainer.checkpointer.save(trainer._snapshot())
    resumed = trainer_for(data, tmp_path / "run", unfreeze="all", ema=0.8)
    resumed._resume()
    back = resumed.ema.module.state_dict()
    assert all(torch.equal(back[k], ema[k]) for k in ema)  # the checkpoint holds the EMA


@pytest.mark.parametrize("winner", ["raw", "ema"])
def test_the_run_keeps_whichever_weights_score_better_on_val(winner, data, tmp_path) -> None:
    trainer = trainer_for(data, tmp_path / winner, unfreeze="all", ema=0.5, epochs=1)

    def scored(items, model=None, tta="none") -> Evaluation:
        is_ema = model is trainer.ema.module
        accuracy = 0.9 if is_ema == (winner == "ema") else 0.5
        return Evaluation(
            {"accuracy": accuracy}, 1.0, np.zeros((len(items), 2)), np.arange(len(items))
        )

    trainer.evaluate = scored
    trainer.run()
    assert trainer.state.best_weights == winner and trainer.state.best_epoch == 0
    kept = Checkpointer(tmp_path / winner).load_best()
    model = trainer.ema.module if winner == "ema" else trainer.model
    assert all(torch.equal(kept[k], v) for k, v in model.state_dict().items())
    assert trainer.state.history["val_metric_ema"] == [0.9 if winner == "ema" else 0.5]


# Per epoch (val accuracy, val loss): accuracy peaks at epoch 1, a one-image spike; the loss
# is lowest at epoch 2. Epoch 3 ties epoch 2's loss with a lower accuracy.
EPOCH_SCORES = [(0.80, 0.50), (0.84, 0.45), (0.83, 0.40), (0.82, 0.40)]


@pytest.mark.parametrize(("select_by", "kept"), [("metric", 1), ("loss", 2)])
def test_select_by_chooses_the_epoch_by_val_accuracy_or_val_loss(
    select_by, kept, data, tmp_path
) -> None:
    trainer = trainer_for(data, tmp_path / select_by, epochs=4, select_by=select_by)
    epoch_weights = []

    def scored(items, model=None, tta="none") -> Evaluation:
        accuracy, loss = EPOCH_SCORES[trainer.state.epoch]
        epoch_weights.append({k: v.clone() for k, v in trainer.model.state_dict().items()})
        n = len(items)
        return Evaluation({"accuracy": accuracy}, loss, np.zeros((n, 3)), np.arange(n))

    trainer.evaluate = scored
    trainer.run()
    assert trainer.state.best_epoch == kept
    assert (trainer.state.best_metric, trainer.state.best_loss) == EPOCH_SCORES[kept]
    best = Checkpointer(tmp_path / select_by).load_best()  # the weights of that epoch
    assert all(torch.equal(best[k], epoch_weights[kept][k]) for k in best)


@pytest.mark.parametrize(
    ("score", "than", "by_metric", "by_loss"),
    [
        ((0.9, 0.5), (0.8, 0.4), True, False),  # more accurate, higher loss
        ((0.8, 0.4), (0.8, 0.5), True, True),  # a tie in accuracy: the loss decides
        ((0.9, 0.4), (0.8, 0.4), True, True),  # a tie in loss: the accuracy decides
        ((0.8, 0.4), (0.8, 0.4), False, False),  # a full tie keeps the earlier
    ],
)
def test_the_two_orders_of_val_scores(score, than, by_metric, by_loss) -> None:
    assert better("metric", score, than) is by_metric
    assert better("loss", score, than) is by_loss


def test_tta_is_the_mean_softmax_of_explicitly_transformed_images(data, tmp_path) -> None:
    trainer = trainer_for(data, tmp_path / "run")
    items = trainer.plan.val
    transform = ImageToUint8(trainer.backbone.data_config, draft=False)
    images = torch.stack([transform(str(data / i.relpath)) for i in items])
    labels = torch.tensor([i.label for i in items])
    with torch.no_grad():
        trainer.model.eval()
        views = {
            "dihedral": symmetries(images),
            "hflip": [images, images.flip(-1)],
            "none": [images],
        }
        for tta, transformed in views.items():
            probs = torch.stack([torch.softmax(trainer.forward(v), 1) for v in transformed]).mean(0)
            result = trainer.evaluate(items, tta=tta)
            np.testing.assert_array_equal(result.pred, probs.argmax(1).numpy())
            nll = float(F.nll_loss(probs.log(), labels))
            assert result.loss == pytest.approx(nll, rel=1e-5, abs=1e-6)
            accuracy = float((probs.argmax(1) == labels).float().mean())
            assert result.metrics["accuracy"] == pytest.approx(accuracy)


@pytest.mark.parametrize("views_win", [True, False])
def test_tta_scores_test_only_where_it_beats_the_plain_image_on_val(
    views_win, data, tmp_path, monkeypatch
) -> None:
    """The views asked for score test (and are what predict replays) only if they beat the
    plain image on val; otherwise the run says why they were left out."""
    evaluate = Trainer.evaluate
    calls: list[tuple[int, str]] = []

    def scored(self, items, model=None, tta="none") -> Evaluation:
        calls.append((len(items), tta))
        result = evaluate(self, items, model, tta)
        result.metrics["accuracy"] = {"none": 0.5, "hflip": 0.9 if views_win else 0.1}[tta]
        return result

    monkeypatch.setattr(Trainer, "evaluate", scored)
    run, result = finetune(data, FinetuneConfig(**BASE | {"tta": "hflip"}), tmp_path / "run")
    chosen = "hflip" if views_win else "none"
    assert result.tta == chosen and run_tta(load_run(run.path)) == chosen
    assert calls[-1] == (result.split_sizes["test"], chosen)  # the last: test, with those views
    assert result.val["accuracy"] == (0.9 if views_win else 0.5)
    left_out = "--tta hflip left out: val accuracy 0.1000 with it, 0.5000 without"
    assert result.tta_note == ("" if views_win else left_out)


@pytest.mark.parametrize("views_win", [True, False])
def test_with_select_by_loss_tta_must_lower_the_val_loss(
    views_win, data, tmp_path, monkeypatch
) -> None:
    """The views are more accurate on val here, but only a lower val loss lets them in."""
    evaluate = Trainer.evaluate

    def scored(self, items, model=None, tta="none") -> Evaluation:
        result = evaluate(self, items, model, tta)
        result.metrics["accuracy"] = {"none": 0.5, "hflip": 0.9}[tta]
        result.loss = {"none": 0.4, "hflip": 0.3 if views_win else 0.6}[tta]
        return result

    monkeypatch.setattr(Trainer, "evaluate", scored)
    config = FinetuneConfig(**BASE | {"tta": "hflip", "select_by": "loss"})
    _, result = finetune(data, config, tmp_path / "run")
    assert result.tta == ("hflip" if views_win else "none")
    left_out = "--tta hflip left out: val loss 0.6000 with it, 0.4000 without"
    assert result.tta_note == ("" if views_win else left_out)


def test_train_and_eval_images_are_at_the_chosen_size_and_progressive_sizes(data, tmp_path):
    for name, options, train_sizes in (
        ("fixed", {"image_size": 48}, [48, 48]),
        ("progressive", {"image_size": 48, "progressive": "0:32,1:40"}, [32, 40]),
        ("augmented", {"image_size": 40, "augment": True}, [40, 40]),
    ):
        trainer = trainer_for(data, tmp_path / name, **options)
        seen: dict[bool, set[tuple[int, ...]]] = {True: set(), False: set()}  # by training mode
        trainer.model.register_forward_pre_hook(
            lambda module, args, seen=seen: seen[module.training].add(tuple(args[0].shape[1:]))
        )
        trainer.run()
        size = options["image_size"]
        assert seen[False] == {(3, size, size)}, name  # every evaluation at --image-size
        assert seen[True] == {(3, s, s) for s in train_sizes}, name
        assert trainer.state.history["image_size"] == train_sizes


def test_a_vit_at_another_size_resamples_its_position_embeddings(data, tmp_path) -> None:
    from timm.layers import resample_abs_pos_embed

    # test_vit3 is built for 160 px (a 10×10 grid of 16 px patches), and refuses other sizes
    trainer = trainer_for(data, tmp_path / "vit", backbone="test_vit3", image_size=64)
    backbone = trainer.model.backbone
    reference = timm.create_model("test_vit3", img_size=64, num_classes=0).eval()
    state = backbone.state_dict()
    state["pos_embed"] = resample_abs_pos_embed(state["pos_embed"], (4, 4), num_prefix_tokens=1)
    missing, unexpected = reference.load_state_dict(state, strict=False)
    assert not unexpected and {k.split(".")[0] for k in missing} == {"attn_pool"}  # its pooling
    x = torch.randn(2, 3, 64, 64)
    backbone.eval()
    with torch.no_grad():
        torch.testing.assert_close(backbone.forward_features(x), reference.forward_features(x))
    trainer.run()  # and it trains and evaluates at 64 px
    assert trainer.state.history["image_size"] == [64, 64]
    with pytest.raises(ArgumentError, match=r"^progressive 96: test_vit3 cannot take 96 px"):
        trainer_for(
            data, tmp_path / "vit2", backbone="test_vit3", image_size=None, progressive="0:96"
        )


def test_resume_after_sigkill_is_bit_identical_with_every_addition_on(data, tmp_path) -> None:
    soft = data / "soft.csv"  # soft labels too, for every image: mixed with mixup/CutMix
    rows = [f"{p.relative_to(data).as_posix()},0.6,0.3,0.1" for p in sorted(data.rglob("*.png"))]
    soft.write_text("path,a,b,c\n" + "\n".join(rows) + "\n")
    options = EVERYTHING | {"soft_labels": str(soft)}
    config = FinetuneConfig(**options)
    whole_run, whole = finetune(data, config, tmp_path / "whole")
    kill_after_first_checkpoint(options, data, tmp_path / "killed", timeout=300)
    killed_run, killed = finetune(data, config, tmp_path / "killed")
    for key in ("train_loss", "val_loss", "val_loss_ema", "image_size"):
        assert killed.history[key] == whole.history[key], key
    assert (killed.kept_weights, killed.best_epoch) == (whole.kept_weights, whole.best_epoch)
    for name in ("backbone.safetensors", "head/head.safetensors"):
        a, b = load_file(str(whole_run.path / name)), load_file(str(killed_run.path / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_checkpoint_from_before_these_options_still_resumes(data, tmp_path) -> None:
    config = FinetuneConfig(**BASE)
    trainer = Trainer(make_plan(data, config, tmp_path / "old"))
    assert not trainer.run(stop_after=1)
    checkpointer = Checkpointer(tmp_path / "old")
    saved = checkpointer.load(torch.device("cpu"))
    new = ("auto_augment", "rot90", "random_erasing", "mixup", "cutmix", "ema", "progressive")
    for name in (*new, "tta"):
        del saved["config"][name]
    del saved["state"]["best_weights"]
    checkpointer.save(saved)
    _, result = finetune(data, config, tmp_path / "old")  # the same options, with defaults
    assert len(result.history["epoch"]) == 2 and result.kept_weights == "raw"


def test_the_command_line_says_what_chose_the_epoch(data, tmp_path, capsys) -> None:
    tiny = ["-b", "test_efficientnet", "-w", "none", "--image-size", "32", "--epochs", "2"]
    tiny += ["--batch-size", "8", "--no-augment", "--workers", "0", "--ema", "0.9"]
    for select_by in ("metric", "loss"):
        out = ["--out", str(tmp_path / select_by), "--select-by", select_by]
        assert main(["finetune", str(data), *tiny, *out]) == 0
        printed = " ".join(capsys.readouterr().out.split())  # rich may wrap the table
        assert ("by val loss" in printed) == (select_by == "loss"), printed
        assert "val loss (EMA)" in printed and "val accuracy (EMA)" in printed


def test_the_options_are_recorded_in_the_run(data, tmp_path) -> None:
    options = {"auto_augment": "trivialaugment", "augment": True, "ema": 0.9, "tta": "hflip"}
    options |= {"select_by": "loss"}
    run, result = finetune(data, FinetuneConfig(**BASE | options), tmp_path / "run")
    recorded = json.loads((run.path / "run.json").read_text())["request"]
    assert {k: recorded[k] for k in options} == options
    assert recorded["rot90"] is False and recorded["progressive"] is None
    metrics = json.loads((run.path / "metrics.json").read_text())
    assert metrics["tta"] == result.tta and metrics["kept_weights"] == result.kept_weights
    assert metrics["tta_note"] == result.tta_note and (result.tta == "hflip") != bool(
        result.tta_note
    )


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--auto-augment", "rand-m9-x1"], "--auto-augment rand-m9-x1: x1 is not a section"),
        (["--tta", "sideways"], "--tta sideways: choose one of none, hflip, dihedral"),
        (["--progressive", "0:abc"], "--progressive 0:abc: abc is not an image size"),
        (["--ema", "1.5"], "--ema 1.5: use a decay in (0, 1)"),
        (["--random-erasing", "2"], "--random-erasing 2.0: use a probability in [0, 1]"),
        (["--mixup", "-1"], "--mixup -1.0: use 0 (off) or a positive alpha"),
        (["--select-by", "accuracy"], "--select-by accuracy: choose one of metric, loss"),
        (["--smoothing", "1"], "--smoothing 1.0: use a share in [0, 1)"),
        (["--drop-path", "1"], "--drop-path 1.0: use a probability in [0, 1)"),
        (["--no-augment", "--auto-augment", "v0"], "--auto-augment v0: it is part of the"),
    ],
)
def test_bad_values_are_one_line_errors_naming_the_flag(flags, message, data, capsys) -> None:
    assert main(["finetune", str(data), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        ("--mixup", "--mixup 0.2: mixing blends"),
        ("--smoothing", "--smoothing 0.2: smoothing softens"),
    ],
)
def test_the_console_script_refuses_soft_labels_for_a_regression_in_one_line(
    flag, message, tmp_path
) -> None:
    lines = ["path,label"]
    for i, image in enumerate(sorted(make_tree(tmp_path / "reg").rglob("*.png"))):
        lines.append(f"{image.relative_to(tmp_path / 'reg').as_posix()},{i / 10:.2f}")
    (tmp_path / "reg" / "values.csv").write_text("\n".join(lines) + "\n")
    args = ["finetune", tmp_path / "reg" / "values.csv", "-b", "test_efficientnet", "-w", "none"]
    proc = console_script(*args, flag, "0.2")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert f"{message} class labels, and" in proc.stderr


def test_the_command_line_takes_every_new_option(data, monkeypatch) -> None:
    import featpipe.finetuning.stage as stage

    class Captured(Exception):
        pass

    def capture(dataset, config, out, runs_dir, progress, status):
        raise Captured(config)

    monkeypatch.setattr(stage, "finetune", capture)
    flags = [
        "--auto-augment",
        "rand-m9-mstd0.5-inc1",
        "--rot90",
        "--random-erasing",
        "0.25",
        "--mixup",
        "0.2",
        "--cutmix",
        "1.0",
        "--ema",
        "0.99",
        "--progressive",
        "0:160,3:224",
        "--tta",
        "dihedral",
        "--image-size",
        "224",
        "--select-by",
        "loss",
        "--smoothing",
        "0.1",
        "--soft-labels",
        "probabilities.csv",
        "--drop-path",
        "0.2",
    ]
    with pytest.raises(Captured) as caught:
        main(["finetune", str(data), *flags])
    expected = {
        "auto_augment": "rand-m9-mstd0.5-inc1",
        "rot90": True,
        "random_erasing": 0.25,
        "mixup": 0.2,
        "cutmix": 1.0,
        "ema": 0.99,
        "progressive": "0:160,3:224",
        "tta": "dihedral",
        "image_size": 224,
        "select_by": "loss",
        "smoothing": 0.1,
        "soft_labels": "probabilities.csv",
        "drop_path": 0.2,
    }
    config = caught.value.args[0]
    assert {k: getattr(config, k) for k in expected} == expected
