"""The export stage (torch side): checkpoints -> fused torch modules -> ONNX -> TensorRT plans.

It arrives with the export issue; this package holds its place in the layout and may import torch.
"""
