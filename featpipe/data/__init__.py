"""Stage 1 input: scan ImageFolder trees and CSV manifests, split them, decode images, load batches.

Nothing here imports torch at package import time, so dataset commands and cache hits stay fast.
"""
