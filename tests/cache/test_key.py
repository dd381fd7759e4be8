"""The cache key: the engine enters it only where it changes the arithmetic, and every key made
before engines could enter it stays what it was."""

from __future__ import annotations

import json

from featpipe.cache.key import KeyFields

BASE = KeyFields(
    model="tf_efficientnet_lite0",
    weights="sha256:abc",
    transform={"input_size": [3, 224, 224], "crop_pct": 0.875},
    pool="avg",
    layer=None,
    precision="fp32",
    dtype="float32",
)
# These fields' digests as featpipe computed them before engines entered the key (fp32, bf16).
BEFORE = {
    "fp32": "2e7551c839eeb5cf6986ce6b5dcecdc86fdef0be346eaf1948aab0477c9ab48d",
    "bf16": "7145014d59d0da5bb3000c6a14dce766429bf78c7a739d862d8356ba6b433667",
}


def test_fp32_keys_name_no_engine_and_keep_their_digests() -> None:
    digests = {BASE.computed("fp32", e).digest for e in ("torch", "onnxruntime", "openvino")}
    assert digests == {BEFORE["fp32"]}


def test_a_reduced_precision_key_names_its_engine_except_torch() -> None:
    torch16, openvino16 = (BASE.computed("bf16", e) for e in ("torch", "openvino"))
    assert torch16.digest == BEFORE["bf16"] and "engine" not in json.loads(torch16.to_json())
    assert openvino16.engine == "openvino" and openvino16.digest not in BEFORE.values()
    # Fields read back from an entry or a memo give the same digest.
    for fields in (torch16, openvino16):
        assert KeyFields(**json.loads(fields.to_json())).digest == fields.digest
    # Back to fp32 (the network's own key, shared by conversions): the engine goes.
    assert openvino16.computed("fp32", "openvino").digest == BEFORE["fp32"]
