"""The vocabularies of the extract options, in one torch-free place.

Validation happens before anything heavy is imported, so a typo costs a fraction of a second
and the CLI's help lists the same words the library accepts.
"""

POOLS = ("avg", "max", "avgmax", "cls")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
ENGINES = ("auto", "torch", "onnxruntime", "openvino")
DTYPES = ("float32", "float16")
ON_ERROR = ("skip", "fail")
# pil: the exact PIL pipeline in workers; tensor: JPEGs decoded in batches on the device.
DECODERS = ("pil", "tensor")
