"""irtool: a graph compiler that makes trained neural networks smaller and faster."""

__version__ = "0.1.0"
