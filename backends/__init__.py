"""Backends turn the IR into an ONNX model, a TVM module or a trainable PyTorch module."""
