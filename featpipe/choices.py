"""The vocabularies of the extract and fine-tune options, in one torch-free place.

Validation happens before anything heavy is imported, so a typo costs a fraction of a second
and the CLI's help lists the same words the library accepts.
"""

POOLS = ("avg", "max", "avgmax", "cls", "cls+avg")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
ENGINES = ("auto", "torch", "onnxruntime", "openvino")
DTYPES = ("float32", "float16")
ON_ERROR = ("skip", "fail")
# pil: the exact PIL pipeline in workers; tensor: JPEGs decoded in batches on the device.
DECODERS = ("pil", "tensor")
# Test-time augmentation: the identity; with the horizontal flip; all 8 symmetries of the square.
TTA = ("none", "hflip", "dihedral")
# Which val score chooses the epoch, the EMA and the test-time augmentation: the task's metric
# (ties broken by the loss), or the loss (ties broken by the metric).
SELECT_BY = ("metric", "loss")
# The --auto-augment value for torchvision's TrivialAugmentWide (timm has no string for it).
TRIVIAL_AUGMENT = "trivialaugment"
