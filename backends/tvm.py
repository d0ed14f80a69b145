"""IR -> TVM Relax -> a compiled CPU module, exportable as a shared library.

Every node is emitted directly with ``relax.BlockBuilder`` through the per-op table in
``tvm_ops`` (TVM's own ONNX importer has no LSTM/GRU and stops at any op it does not know).
Nodes whose inputs are all constants are evaluated while emitting, so shape arithmetic
(``Shape -> Gather -> Concat -> Reshape``) becomes constants, as the graph is static.

Compilation for ``llvm`` on the host CPU: convolutions are converted to NHWC, ops are
legalized to TIR and fused, and ``tvm_schedule`` gives the fused functions parallel, vectorised,
register-blocked schedules (TVM's default CPU pipeline leaves them as scalar loops).
The result runs on the Relax VM; ``export`` writes one ``.so`` that ``load_compiled`` reads back.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..ir.core import Graph, Value
from ..ir.errors import IrtoolError
from .files import atomic_write

__all__ = ["CompiledModel", "compile_graph", "host_target", "load_compiled", "require_tvm", "set_threads", "to_relax"]

_ENTRY = "main"


def require_tvm():
    """The ``tvm`` module, or the one-line error saying how to install it."""
    return _tvm()


def _tvm():
    try:
        import tvm
        from tvm import relax  # noqa: F401
    except ImportError:
        raise IrtoolError("TVM is not installed (pip install 'irtool[tvm]')") from None
    return tvm


# -- emission ----------------------------------------------------------------------------------
def to_relax(graph: Graph):
    """The graph as a Relax ``IRModule`` with one function ``main``: inputs in graph order,
    constants embedded, a tuple of the graph outputs as its result."""
    tvm = _tvm()
    from tvm import relax

    from .tvm_ops import EMITTERS, const, fold_constant_node

    params = [relax.Var(_var_name(v.name, i), _relax_type(v)) for i, v in enumerate(graph.inputs)]
    env: dict[Value, Any] = dict(zip(graph.inputs, params))

    def expr_of(value: Value | None):
        if value is None:
            return None
        if value not in env:
            if not value.is_const:
                raise IrtoolError(f"TVM backend: value '{value.name}' is used before it is computed")
            env[value] = const(value.const)
        return env[value]

    bb = relax.BlockBuilder()
    with bb.function(_ENTRY, params):
        with bb.dataflow():
            for node in graph.nodes:
                args = [expr_of(v) for v in node.inputs]
                results = fold_constant_node(node, args, graph.opset)
                if results is None:
                    emitter = EMITTERS.get(node.op) if not node.domain else None
                    if emitter is None:
                        raise IrtoolError(f"TVM backend: op '{node.qualified_op}' (node '{node.name}') cannot be emitted")
                    results = _emit_node(emitter, bb, node, args)
                if not isinstance(results, (list, tuple)):
                    results = [results]
                for value, result in zip(node.outputs, results):
                    if result is not None:
                        env[value] = result
            outputs = [expr_of(v) for v in graph.outputs]
            result = bb.emit_output(relax.Tuple(outputs))
        bb.emit_func_output(result)
    return bb.get()


def _emit_node(emitter, bb, node, args):
    try:
        return emitter(bb, node, args)
    except IrtoolError:
        raise
    except Exception as exc:  # noqa: BLE001 - Relax reports type errors as ValueError/TVM errors
        shapes = ", ".join(str(getattr(a, "ty", None)) for a in args if a is not None)
        raise IrtoolError(
            f"TVM backend: {node.op} '{node.name}' cannot be emitted for inputs ({shapes}): {_first_line(exc)}"
        ) from None


def _var_name(name: str, index: int) -> str:
    clean = re.sub(r"\W", "_", name)
    return clean if clean and not clean[0].isdigit() else f"input_{index}"


def _relax_type(value: Value):
    from tvm import relax

    if value.type is None or not value.type.is_static:
        raise IrtoolError(
            f"TVM backend: input '{value.name}' has shape {value.type}; the TVM backend compiles "
            "static shapes (give the model a fixed input shape)"
        )
    return relax.TensorType([int(d) for d in value.type.shape], value.type.dtype.name)


# -- targets and threads -----------------------------------------------------------------------
def host_target():
    """``llvm`` for this machine's CPU (its ``mcpu``, so AVX2/AVX-512 are used). A library built
    for it runs on CPUs with the same instruction set extensions."""
    tvm = _tvm()
    mcpu = str(tvm.target.Target.from_device(tvm.cpu()).attrs.get("mcpu", "generic"))
    return tvm.target.Target({"kind": "llvm", "mcpu": mcpu})


def _target(target):
    tvm = _tvm()
    if target is None:
        return host_target()
    if isinstance(target, tvm.target.Target):
        return target
    try:
        return tvm.target.Target(target)
    except Exception as exc:  # noqa: BLE001 - TVM raises ValueError or its own errors
        raise IrtoolError(f"TVM backend: target {target!r} is not valid: {str(exc).splitlines()[0]}") from None


_SHARE_ALL_CORES = -3
"""TVM thread-pool affinity mode: the workers may run on any of the given cores."""
_pool_size: int | None = None
"""The size ``set_threads`` last gave the pool."""


def set_threads(threads: int) -> None:
    """Size TVM's CPU thread pool to ``threads`` workers, process-wide.

    TVM starts with ``TVM_NUM_THREADS`` workers (default: half the logical cores); this
    reconfigures the running pool, over the cores this process may use.
    """
    tvm = _tvm()
    if threads < 1:
        raise IrtoolError(f"threads must be at least 1, not {threads}")
    global _pool_size
    if _pool_size != threads:
        cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
        tvm.get_global_func("runtime.config_threadpool")(_SHARE_ALL_CORES, int(threads), [str(c) for c in cores])
        _pool_size = threads


# -- compile, run, export ----------------------------------------------------------------------
def compile_graph(graph: Graph, *, target=None, threads: int | None = None) -> "CompiledModel":
    """Compile the graph for a CPU target (the host's by default) into a runnable module.

    ``target`` is a ``tvm.target.Target`` or its JSON-like dict (``{"kind": "llvm", ...}``).
    ``threads`` is the thread count ``run`` uses; None keeps TVM's pool as it is
    (``TVM_NUM_THREADS``, by default half the logical cores).
    """
    tvm = _tvm()
    mod = to_relax(graph)
    resolved = _target(target)
    try:
        executable = tvm.compile(mod, resolved, relax_pipeline=_cpu_pipeline(resolved))
    except IrtoolError:
        raise
    except Exception as exc:  # noqa: BLE001 - compiler failures surface as many TVM error types
        raise IrtoolError(f"TVM backend: compiling '{graph.name}' failed: {_first_line(exc)}") from None
    return CompiledModel(executable, threads=threads, name=graph.name)


def _cpu_pipeline(target):
    tvm = _tvm()
    from tvm import relax
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    from .tvm_schedule import CpuModel, cpu_schedule_pass, pad_channels_pass

    model = CpuModel.of(target)

    @tvm.transform.module_pass(opt_level=0, name="IrtoolCpuPipeline")
    def pipeline(mod, _ctx):
        passes = [
            pad_channels_pass(model),
            _to_channels_last(),
            relax.transform.Normalize(),
            _fold_constant_layouts(),
            relax.transform.CanonicalizeBindings(),
            *cpu.library_dispatch_passes(target),
            *cpu.legalize_passes(target),
            relax.transform.DeadCodeElimination(),
            cpu_schedule_pass(model),
            *cpu.dataflow_lower_passes(target),
            *cpu.finalize_passes(target),
        ]
        with target:
            return tvm.transform.Sequential(passes)(mod)

    return pipeline


def _to_channels_last():
    """Convolutions in NHWC with HWIO weights: the output channels, contiguous, become the
    vector axis of the convolution kernels; element-wise ops and pools follow the layout.
    Relax's conversion fails on a few ops; the module then stays in NCHW (correct, slower)."""
    tvm = _tvm()
    from tvm import relax

    # Relax legalizes a transposed convolution only in NCHW; left out of the table it would
    # follow its producer into NHWC and fail to compile, so it is pinned to NCHW.
    convert = relax.transform.ConvertLayout(
        {"relax.nn.conv2d": ["NHWC", "HWIO"], "relax.nn.conv2d_transpose": ["NCHW", "IOHW"]}
    )

    @tvm.transform.module_pass(opt_level=0, name="IrtoolChannelsLast")
    def channels_last(mod, _ctx):
        try:
            return convert(mod)
        except Exception:  # noqa: BLE001 - a TVM limitation, not a user error
            return mod

    return channels_last


def _fold_constant_layouts():
    """Transpose and reshape constant weights in numpy: the layout change to NHWC/HWIO would
    otherwise be folded by compiling and running one TIR function per weight (seconds each)."""
    tvm = _tvm()
    from tvm import relax

    from .tvm_ops import const

    permute, reshape = tvm.ir.Op.get("relax.permute_dims"), tvm.ir.Op.get("relax.reshape")

    @relax.expr_functor.mutator
    class Fold(relax.PyExprMutator):
        def visit_call_(self, call):
            call = self.visit_expr_post_order(call)
            if not isinstance(call, relax.Call) or not call.args or not isinstance(call.args[0], tvm.ir.GenericConst):
                return call
            array = call.args[0].value.numpy()
            if call.op.same_as(permute):
                axes = call.attrs.axes
                order = None if axes is None else [int(a) for a in axes]
                return const(np.transpose(array, order))
            if call.op.same_as(reshape) and hasattr(call.ty, "shape") and call.ty.shape is not None:
                return const(array.reshape([int(d) for d in call.ty.shape.values]))
            return call

    @tvm.transform.module_pass(opt_level=0, name="IrtoolFoldConstantLayouts")
    def fold(mod, _ctx):
        folder = Fold(mod)
        for gvar, func in mod.functions_items():
            if isinstance(func, relax.Function):
                mod[gvar] = folder.visit_expr(func)
        return mod

    return fold


class CompiledModel:
    """A compiled module on the Relax VM: ``run`` numpy arrays, ``export`` a shared library."""

    def __init__(self, module, *, threads: int | None = None, name: str = "model"):
        tvm = _tvm()
        from tvm import relax

        self.module = module
        self.name = name
        self.threads = threads
        self._device = tvm.cpu()
        self._vm = relax.VirtualMachine(module, self._device)
        self._main = self._vm[_ENTRY]
        self.arity = int(self._vm._get_function_arity(_ENTRY))

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        """The outputs for ``inputs`` given in graph-input order."""
        return [out.numpy() for out in self.run_tensors(self.prepare(inputs))]

    def prepare(self, inputs: Sequence[np.ndarray]) -> list:
        """Inputs as TVM tensors, made once; ``run_tensors`` then measures only the model."""
        tvm = _tvm()
        if len(inputs) != self.arity:
            raise IrtoolError(f"TVM backend: '{self.name}' takes {self.arity} inputs, got {len(inputs)}")
        return [tvm.runtime.tensor(np.require(x, requirements="C"), self._device) for x in inputs]

    def run_tensors(self, tensors: Sequence) -> list:
        """Run on prepared inputs; the outputs stay TVM tensors (``.numpy()`` copies one)."""
        if self.threads:
            set_threads(self.threads)
        try:
            result = self._main(*tensors)
        except Exception as exc:  # noqa: BLE001 - the VM reports shape/dtype mismatches as TVM errors
            raise IrtoolError(f"TVM backend: running '{self.name}' failed: {_first_line(exc)}") from None
        return list(result) if not hasattr(result, "numpy") else [result]

    def export(self, path: str | os.PathLike) -> Path:
        """Write the module as one shared library (``.so``), atomically."""
        target = Path(path)
        if target.suffix != ".so":
            raise IrtoolError(f"TVM backend: export path '{path}' must end in .so")

        def write(tmp: Path) -> None:
            with tempfile.TemporaryDirectory(prefix="irtool-tvm-") as folder:
                built = Path(folder) / "model.so"
                self.module.export_library(str(built))
                shutil.copyfile(built, tmp)

        return atomic_write(target, write)


def load_compiled(path: str | os.PathLike, *, threads: int | None = None) -> CompiledModel:
    """A module written by ``CompiledModel.export``."""
    tvm = _tvm()
    source = Path(path)
    if not source.is_file():
        raise IrtoolError(f"compiled model '{path}' does not exist")
    try:
        module = tvm.runtime.load_module(str(source))
    except Exception as exc:  # noqa: BLE001
        raise IrtoolError(f"TVM backend: cannot load '{path}': {_first_line(exc)}") from None
    return CompiledModel(module, threads=threads, name=source.stem)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    # TVM ends some messages with a comment about omitted metadata; it says nothing.
    lines = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("# ")]
    errors = [line for line in lines if "Error" in line or "error" in line]
    return (errors[-1] if errors else lines[-1] if lines else type(exc).__name__).strip()
