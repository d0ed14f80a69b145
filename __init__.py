"""irtool: a graph compiler that makes trained neural networks smaller and faster."""

__version__ = "0.1.0"


def __getattr__(name: str):
    # `irtool.optimize` is imported on first use, so `import irtool` (and the CLI) stays fast.
    if name == "optimize":
        from .tools.api import optimize

        return optimize
    raise AttributeError(f"module 'irtool' has no attribute {name!r}")
