"""diffrt: export diffusion checkpoints once, run them with a torch-free runtime.

Subpackages: ``diffrt.runtime`` (NumPy + ONNX Runtime / TensorRT, never torch), ``diffrt.export`` (torch side),
``diffrt.kernels`` (graph passes). Importing ``diffrt`` itself imports none of them.
"""

__version__ = "0.1.0"
