"""Frontends lower ONNX and PyTorch models into the IR."""
