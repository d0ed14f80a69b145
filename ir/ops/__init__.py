"""Op definitions. Importing this package registers every op irtool knows.

Schemas, shape rules and cost rules live in the topic modules; channel rules (used by the
channel dependency analysis) are attached in ``channels``.
"""

from importlib import import_module

for _module in ("defs", "channels"):
    try:
        import_module(f"{__name__}.{_module}")
    except ModuleNotFoundError as exc:  # a module still being written
        if exc.name != f"{__name__}.{_module}":
            raise
