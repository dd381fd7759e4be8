"""What keeping freed buffers on the heap (``featpipe.runtime.allocator``) is worth on this CPU.

Two fresh processes run the same probe, one with glibc's defaults and one after
``keep_freed_memory()``: EfficientNet-Lite0 (random weights: speed does not depend on them),
batch 32, 224 px, channels_last, fp32; images/s of an eval forward and of a training step
(forward + backward), with the page faults and system time they cost.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

PROBE = """
import json, resource, sys, time
import timm, torch
from featpipe.runtime.allocator import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "kept" else False
model = timm.create_model("tf_efficientnet_lite0").to(memory_format=torch.channels_last)
x = torch.randn(32, 3, 224, 224).contiguous(memory_format=torch.channels_last)
def step(train):
    if train:
        model.train()
        model(x).sum().backward()
    else:
        model.eval()
        with torch.inference_mode():
            model(x)
out = {"allocator": sys.argv[1], "applied": applied}
for name, train in (("forward", False), ("train", True)):
    step(train)
    before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for _ in range(4):
        step(train)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF)
    out[name] = {"images_per_s": round(4 * 32 / seconds, 1),
                 "page_faults": after.ru_minflt - before.ru_minflt,
                 "system_seconds": round(after.ru_stime - before.ru_stime, 2)}
print(json.dumps(out))
"""


def probe(mode: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(work: Path, quick: bool = False) -> dict[str, Any]:
    rows = [probe("default"), probe("kept"), probe("default"), probe("kept")]
    for row in rows:
        print(row, flush=True)
    return {"rows": rows}


def markdown(results: dict[str, Any]) -> str:
    lines = [
        "EfficientNet-Lite0, batch 32, 224 px, fp32, channels_last; four fresh processes, "
        "alternating.",
        "",
        "| allocator | forward img/s | page faults | sys s | train img/s | page faults | sys s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results["rows"]:
        f, t = r["forward"], r["train"]
        name = "glibc defaults" if r["allocator"] == "default" else "freed buffers kept"
        lines.append(
            f"| {name} | {f['images_per_s']} | {f['page_faults']:,} | {f['system_seconds']} | "
            f"{t['images_per_s']} | {t['page_faults']:,} | {t['system_seconds']} |"
        )
    return "\n".join(lines)
