"""``irtool passes [NAME]``: every pass with its options, their types, defaults and help."""

from __future__ import annotations

import argparse
import dataclasses

from ..ir.errors import IrtoolError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", nargs="?", help="show only this pass")


def describe_pass(cls) -> str:
    lines = [f"{cls.name:<12}  {cls.summary()}"]
    for option in cls.options():
        default = "required" if option.default is dataclasses.MISSING else f"default {option.format(option.default)}"
        lines.append(f"    {option.name}: {option.type_name} ({default})")
        if option.help:
            lines.append(f"        {option.help}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from ..passes.base import get_pass, load_all_passes
    from ..passes.registry_table import BUILTIN_ANALYSES

    if args.name:
        print(describe_pass(get_pass(args.name)))
        return 0
    loaded, unavailable = load_all_passes()
    if not loaded and unavailable:
        raise IrtoolError("no pass could be loaded: " + "; ".join(unavailable.values()))
    blocks = [describe_pass(loaded[name]) for name in sorted(loaded)]
    blocks += [f"{name:<12}  ({why})" for name, why in sorted(unavailable.items())]
    print("\n".join(blocks))
    print(f"\nanalyses: {', '.join(sorted(BUILTIN_ANALYSES))}")
    from ..passes.criteria import criterion_names

    print(f"criteria: {', '.join(criterion_names())}")
    print("pipeline syntax: pass,pass{option=value option=[a,b]},...")
    return 0
