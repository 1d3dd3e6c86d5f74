"""ONNX graph passes the runtime's engines apply to exported graphs: attention fused into ONNX Runtime's
``MultiHeadAttention`` (:mod:`.attention`) and float16 conversion for the CUDA provider (:mod:`.fp16`)."""
