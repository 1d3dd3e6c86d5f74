"""Graph-level kernels: ONNX fusion passes per execution provider and custom ops. Imported by export and runtime."""
