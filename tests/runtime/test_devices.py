"""Host-side settings of the CUDA path that can be checked without a GPU."""

from __future__ import annotations

import pytest
import torch

from featpipe.runtime.devices import CUDA_HOST_THREADS, host_threads
from featpipe.runtime.workers import default_workers


def test_cuda_loops_hold_the_host_thread_pool_small_and_restore_it() -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(4)
    try:
        with host_threads(torch.device("cuda")):
            assert torch.get_num_threads() == CUDA_HOST_THREADS
        assert torch.get_num_threads() == 4
        with host_threads(torch.device("cpu")):  # a CPU forward needs its threads
            assert torch.get_num_threads() == 4
    finally:
        torch.set_num_threads(before)


def test_workers_use_every_spare_core_with_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.cpu_count", lambda: 16)
    assert default_workers(10_000, 256, gpu=True) == 15
    assert default_workers(10_000, 32) == 4  # on a CPU the forward needs the other cores
    assert default_workers(10_000, 32, world=4) == 1  # torchrun ranks share the node
    assert default_workers(10_000, 32, world=8) == 0  # 2 cores per rank: decode in the rank
    assert default_workers(20, 32) == 0  # a handful of images: no processes to start


def test_bad_device_and_precision_name_their_parameter() -> None:
    from featpipe.errors import ArgumentError
    from featpipe.runtime.devices import check_precision, resolve_device

    with pytest.raises(ArgumentError) as bad_device:
        resolve_device("gpu0")
    assert bad_device.value.param == "device" and "cuda:N" in str(bad_device.value)
    with pytest.raises(ArgumentError) as half_on_cpu:
        check_precision(torch.device("cpu"), "fp16")
    assert half_on_cpu.value.param == "precision" and str(half_on_cpu.value).startswith(
        "precision fp16 is for CUDA"
    )
