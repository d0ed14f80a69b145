"""irtool as a plugin of a compiler orchestrator (Kenning and the like).

An orchestrator finds the plugin through the ``irtool.orchestrator`` entry-point group::

    from importlib.metadata import entry_points
    Plugin = entry_points(group="irtool.orchestrator")["irtool"].load()
    plugin = Plugin({"pipeline": [{"type": "prune", "parameters": {"sparsity": 0.5}},
                                  {"type": "quantize"}],
                     "targets": ["onnx"]})
    measurements = plugin.run("model.onnx", "build/")      # a JSON-ready dict

The configuration is a dict, or a JSON/TOML/YAML file, valid against ``Plugin.config_schema()``
(``tools/plugin_schema.json``); it is checked when the plugin is made, so a bad one fails before
any work. ``run`` optimizes the model, writes the artifacts (``<name>.onnx``, ``<name>.so``)
and the measurements JSON (``<output_dir>/measurements.json`` unless the configuration's
``measurements.path`` says otherwise) into the output folder, and returns the measurements,
which are valid against ``Plugin.measurements_schema()`` (``tools/measurements_schema.json``).

Orchestrators that run tools in a subprocess call the same thing from the command line::

    python -m irtool.tools.plugin MODEL OUTPUT_DIR --config config.json

which prints the path of the measurements JSON; bad input prints one line on stderr and exits
with status 2, having written nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

from ..backends.files import atomic_write_text
from ..ir.errors import IrtoolError

ENTRY_POINT_GROUP = "irtool.orchestrator"
ENTRY_POINT_NAME = "irtool"
CONFIG_SCHEMA_FILE = "plugin_schema.json"
MEASUREMENTS_SCHEMA_FILE = "measurements_schema.json"


@cache
def _schema(name: str) -> dict[str, Any]:
    return json.loads(Path(__file__).with_name(name).read_text(encoding="utf-8"))


def write_measurements(measurements: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Write the measurements JSON atomically (creating its folder)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(dict(measurements), indent=2, allow_nan=False)
    return atomic_write_text(target, text + "\n")


class IrtoolPlugin:
    """Optimize a model with an irtool pipeline and report measurements, for an orchestrator.

    ``config`` is a dict (relative paths from the current folder) or the path of a JSON, TOML
    or YAML file (relative paths from its folder). ``run(input_model, output_dir)`` returns
    the measurements dict and writes it as JSON beside the artifacts.
    """

    name = ENTRY_POINT_NAME

    def __init__(self, config: Mapping[str, Any] | str | os.PathLike):
        from .scenario import load_config

        self.config = load_config(config)

    @staticmethod
    def config_schema() -> dict[str, Any]:
        """The JSON Schema of the configuration."""
        return _schema(CONFIG_SCHEMA_FILE)

    @staticmethod
    def measurements_schema() -> dict[str, Any]:
        """The JSON Schema of what ``run`` returns."""
        return _schema(MEASUREMENTS_SCHEMA_FILE)

    def measurements_path(self, output_dir: str | os.PathLike) -> Path:
        from .scenario import MEASUREMENTS_FILE

        return self.config.measurements_path or Path(output_dir) / MEASUREMENTS_FILE

    def run(self, input_model: str | os.PathLike, output_dir: str | os.PathLike) -> dict[str, Any]:
        """Optimize ``input_model`` into ``output_dir``; the measurements, also written as JSON."""
        from .api import optimize

        config = self.config
        result = optimize(
            str(input_model),
            config.passes,
            input_shapes=config.input_shapes,
            data=config.data,
            eval_data=config.eval_data,
            targets=config.targets,
            output_dir=output_dir,
            name=config.name,
            measure=config.measure,
        )
        result.notes[:0] = config.notes
        measurements = result.to_dict()
        write_measurements(measurements, self.measurements_path(output_dir))
        return measurements


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m irtool.tools.plugin", description="Run the irtool orchestrator plugin on one model."
    )
    parser.add_argument("model", help="the input model (ONNX, .pt2, or package.module:factory)")
    parser.add_argument("output_dir", help="folder for the artifacts and the measurements JSON")
    parser.add_argument("--config", required=True, help="the plugin configuration (JSON, TOML or YAML)")
    args = parser.parse_args(argv)
    try:
        plugin = IrtoolPlugin(args.config)
        plugin.run(args.model, args.output_dir)
    except IrtoolError as exc:
        print(f"irtool plugin: {exc}", file=sys.stderr)
        return 2
    print(plugin.measurements_path(args.output_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
