"""The ``irtool`` command line.

Each subcommand lives in its own module ``irtool.tools.cmd_<name>`` with ``add_arguments(parser)``
and ``run(args) -> int``; modules are imported only when their command runs, so ``--help`` is fast.
Any ``IrtoolError`` becomes one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys

from ..ir.errors import IrtoolError

COMMANDS: dict[str, str] = {
    "show": "print a model's IR with a summary (nodes by op, params, MACs)",
    "opt": "run a pass pipeline on a model and write the result",
    "passes": "list every pass with its options and defaults",
    "verify": "check a pruned model against the original with the equivalence oracle",
    "draw": "draw the graph (DOT, SVG or PNG), optionally coloured by channel group",
    "bench": "measure inference latency on onnxruntime and TVM",
    "demo": "train, prune, fine-tune, quantize and benchmark a small model end to end",
    "run": "run a scenario file (model, pipeline, data, targets, measurements)",
    "analyze": "sensitivity of each channel group to pruning, and the latency table",
}


def _command_module(name: str):
    return importlib.import_module(f"{__package__}.cmd_{name}")


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def build_parser(load_all: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="irtool", description="Make neural networks smaller and faster.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if load_all:
            try:
                module = _command_module(name)
            except ModuleNotFoundError as exc:
                if exc.name != f"{__package__}.cmd_{name}":
                    raise
                continue
            module.add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(load_all=command not in COMMANDS)
    if command in COMMANDS:
        # Only the chosen command's options are needed: import just that module.
        for action in parser._subparsers._group_actions:  # type: ignore[union-attr]
            sub = action.choices[command]
            try:
                module = _command_module(command)
            except ModuleNotFoundError as exc:
                if exc.name != f"{__package__}.cmd_{command}":
                    raise
                print(f"irtool: {command}: not available in this version", file=sys.stderr)
                return 2
            module.add_arguments(sub)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0) if exc.code in (0, None) else 2
    if args.command is None:
        parser.print_help()
        return 2
    # SIGTERM (a job killed by a scheduler) unwinds like Ctrl-C, so partial outputs are removed.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        return int(_command_module(args.command).run(args) or 0)
    except IrtoolError as exc:
        print(f"irtool: {args.command}: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader went away (`irtool show ... | head`): stop quietly, as Unix tools do.
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print(f"irtool: {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
