"""Where and how a forward pass runs: devices and precision, engines, the speed probe,
the allocator and torchrun collectives. Shared by extraction, fine-tuning and prediction.
"""
