"""Using a run: predict on new images, export TorchScript / ONNX."""
