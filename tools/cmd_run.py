"""``irtool run SCENARIO``: run a scenario file (JSON, TOML or YAML) as the orchestrator plugin does.

The scenario names the model, the pipeline steps, the data, the targets and the measurements
(see ``tools/scenario.py``). The artifacts and the measurements JSON are written at the end,
atomically; a bad scenario or model writes nothing.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("scenario", help="scenario file: .json, .toml or .yaml")
    parser.add_argument("--output-dir", help="folder for the artifacts (overrides the scenario's output_dir)")
    parser.add_argument("--measurements", help="where to write the measurements JSON (overrides the scenario's)")
    parser.add_argument("--check", action="store_true", help="only check the scenario; run nothing")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .api import optimize, summarize_change
    from .plugin import write_measurements
    from .scenario import load_scenario

    scenario = load_scenario(args.scenario, output_dir=args.output_dir)
    config = scenario.config
    target = Path(args.measurements) if args.measurements else scenario.measurements_path
    if args.check:
        print(f"{scenario.source}: ok: {scenario.model} -> {','.join(str(p) for p in config.passes)} -> {', '.join(config.targets)}")
        return 0
    result = optimize(
        scenario.model,
        config.passes,
        input_shapes=config.input_shapes,
        data=config.data,
        eval_data=config.eval_data,
        targets=config.targets,
        output_dir=scenario.output_dir,
        name=config.name,
        measure=config.measure,
    )
    result.notes[:0] = config.notes
    for record in result.passes:
        for line in record.messages or ["no change"]:
            print(f"{record.spec}: {line}")
    print()
    print(result.summary())
    for message in [*result.notes, *(f"warning: {w}" for w in result.warnings)]:
        print(message)
    written = write_measurements(result.to_dict(), target)
    print(f"\n{summarize_change(result)}; measurements: {written}")
    return 0
