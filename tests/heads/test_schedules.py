"""One learning-rate schedule module, one rule per name, held to torch's own schedulers; the
stacked heads and fine-tuning both use it."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from featpipe.errors import ArgumentError
from featpipe.heads.config import HeadConfig
from featpipe.heads.schedules import SCHEDULES, lr_factor
from featpipe.heads.stacked import train_group


def torch_factors(scheduler_for, total: int) -> list[float]:
    """The factors a torch.optim.lr_scheduler gives over ``total`` steps (base lr 1)."""
    param = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([param], lr=1.0)
    sched = scheduler_for(opt)
    factors = []
    for _ in range(total):
        factors.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return factors


@pytest.mark.parametrize("total", [9, 30, 40, 121])
def test_step_is_tenfold_drops_at_thirds_of_the_steps(total: int) -> None:
    ours = [lr_factor("step", t, total) for t in range(total)]
    milestones = [math.ceil(total / 3), math.ceil(2 * total / 3)]
    ref = torch_factors(lambda o: torch.optim.lr_scheduler.MultiStepLR(o, milestones, 0.1), total)
    np.testing.assert_allclose(ours, ref, rtol=1e-12)
    assert sorted(set(np.round(ours, 12))) == [0.01, 0.1, 1.0]


@pytest.mark.parametrize("total", [10, 37])
def test_cosine_and_none(total: int) -> None:
    ours = [lr_factor("cosine", t, total) for t in range(total)]
    ref = torch_factors(
        lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=total, eta_min=0.0), total
    )
    np.testing.assert_allclose(ours, ref, rtol=1e-9, atol=1e-12)
    assert [lr_factor("none", t, total) for t in range(total)] == [1.0] * total


def test_warm_up_is_linear_then_the_rule_runs_over_the_remaining_steps() -> None:
    warm, total = 4, 16
    assert [lr_factor("cosine", t, total, warm) for t in range(warm)] == [0.25, 0.5, 0.75, 1.0]
    after = [lr_factor("step", t, total, warm) for t in range(warm, total)]
    assert after == [1.0] * 4 + [0.1] * 4 + [pytest.approx(0.01)] * 4
    assert lr_factor("cosine", warm + 6, total, warm) == pytest.approx(0.5)  # half of 12 steps


def test_unknown_schedule_names_the_parameter() -> None:
    with pytest.raises(ArgumentError, match="schedule linear: choose one of cosine, step, none"):
        lr_factor("linear", 0, 10)
    assert SCHEDULES == ("cosine", "step", "none")


def test_stacked_heads_follow_the_step_rule_like_torch_multisteplr() -> None:
    """A linear head trained by the stacked trainer with schedule=step equals torch.optim SGD
    under torch's MultiStepLR at the same thirds (old rule: ×0.1 every epochs//3 epochs)."""
    rng = np.random.default_rng(0)
    X = torch.from_numpy(rng.normal(size=(200, 8)).astype(np.float32))
    y = torch.from_numpy((X.numpy() @ rng.normal(size=(8, 3))).argmax(1))
    config = HeadConfig(
        head="linear", optimizer="sgd", schedule="step", lr=0.1, wd=0.0, epochs=4, batch_size=50
    )
    [ours] = train_group([config], X, y, n_out=3)
    gen = torch.Generator().manual_seed(0)
    ref = torch.nn.Linear(8, 3)
    bound = 1 / math.sqrt(8)
    ref.weight.data = (torch.rand(3, 8, generator=gen) * 2 - 1) * bound
    ref.bias.data = (torch.rand(3, generator=gen) * 2 - 1) * bound
    opt = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9)
    total = 4 * 4
    sched = torch.optim.lr_scheduler.MultiStepLR(
        opt, [math.ceil(total / 3), math.ceil(2 * total / 3)], 0.1
    )
    order_gen = torch.Generator().manual_seed(0)
    for _ in range(4):
        order = torch.randperm(200, generator=order_gen)
        for s in range(4):
            idx = order[s * 50 : (s + 1) * 50]
            loss = torch.nn.functional.cross_entropy(ref(X[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    torch.testing.assert_close(ours.module[0].weight, ref.weight, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(ours.module[0].bias, ref.bias, atol=1e-6, rtol=1e-5)


def test_fine_tuning_uses_the_same_schedule_module() -> None:
    """Fine-tuning's trainer calls this module's function (no second rule under the name)."""
    from featpipe.finetuning import model, trainer

    assert trainer.lr_factor is lr_factor
    assert not hasattr(model, "lr_factor")
