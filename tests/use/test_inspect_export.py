"""``featpipe inspect --export onnx``: the file README shows runs offline and takes any batch."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torchvision.models import MobileNet_V2_Weights

from conftest import console_script

README_EXAMPLE = ["inspect", "tv/mobilenet_v2", "--weights", "offline", "--export", "onnx", "-o"]
CATS = range(281, 286)  # ImageNet's domestic cats (tabby … Egyptian cat)


def test_inspect_onnx_has_a_dynamic_batch_and_real_weights(tmp_path, photos) -> None:
    """README's example, with the offline torchvision weights: batch 1 and 3 give the same
    logits, and the network names the cat (an oracle featpipe did not compute: torchvision's
    own transform of those weights)."""
    import onnxruntime as ort

    out = tmp_path / "mobilenet_v2.onnx"
    done = console_script(*README_EXAMPLE, out)
    assert done.returncode == 0, done.stderr
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[0] == "batch"
    transform = MobileNet_V2_Weights.IMAGENET1K_V1.transforms()
    names = ("chelsea", "coffee", "astronaut")
    images = torch.stack([transform(Image.open(photos[n]).convert("RGB")) for n in names])
    three = session.run(None, {"images": images.numpy()})[0]
    ones = [session.run(None, {"images": images[i : i + 1].numpy()})[0] for i in range(3)]
    assert three.shape == (3, 1000)
    np.testing.assert_allclose(np.concatenate(ones), three, atol=1e-4)
    assert int(three[0].argmax()) in CATS
