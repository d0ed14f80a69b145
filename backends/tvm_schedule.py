"""CPU schedules for the TIR functions the TVM backend compiles.

TVM's default ``llvm`` pipeline lowers every op to plain loop nests: one thread, no vectors,
a convolution at ~1 GFLOP/s. This module is the schedule pass that makes them fast, in the
spirit of TVM's ``dlight`` rules, written for CPUs:

- *multiply-accumulate* blocks (convolution in NHWC, matmul, dense) get a register-blocked
  micro-kernel: ``mr`` output rows x ``nr`` output channels accumulate in vector registers over
  the whole reduction, the elementwise epilogue (bias, BN, activation, residual add) is folded
  into the write-back, and tiles run in parallel. A constant weight operand is repacked into
  ``[N / nr, ..., nr]`` panels, so the kernel streams it contiguously.
- every other block is inlined into its consumer where possible, otherwise parallelised over
  its outer loops and vectorised along its contiguous innermost axis.

Tile sizes come from a small model of the core (vector lanes, 16 vector registers, FMA latency,
L2 size) instead of tuning, so compiling stays deterministic and fast.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax, s_tir, tirx

__all__ = ["CpuModel", "choose_tile", "cpu_schedule_pass", "pack_panels", "pad_channels_pass"]

_CALL_TIR = tvm.ir.Op.get("relax.call_tir")
_IF_THEN_ELSE = tvm.ir.Op.get("prim.if_then_else")
_PARALLEL_MIN_WORK = 16384
"""Blocks with fewer iterations than this run on one thread: a parallel launch costs microseconds."""


@dataclass(frozen=True)
class CpuModel:
    """What the tile-size model needs to know about the target core."""

    lanes: int = 8
    """float32 lanes of one vector register (8 for AVX2, 16 for AVX-512)."""
    registers: int = 16
    l2_bytes: int = 512 * 1024

    @classmethod
    def of(cls, target: tvm.target.Target) -> "CpuModel":
        """The model for an ``llvm`` target, from the instruction set LLVM gives its ``mcpu``."""
        from tvm.target.codegen import target_has_features

        if target_has_features("avx512f", target):
            return cls(lanes=16, registers=32)
        if target_has_features("avx", target):
            return cls()
        return cls(lanes=4, registers=16)  # SSE or NEON: 128-bit vectors

    @property
    def accumulators(self) -> int:
        """Vector registers a micro-kernel may keep partial sums in (the rest hold operands)."""
        return self.registers * 3 // 4


# -- channel counts that are not whole registers ----------------------------------------------
def pad_channels_pass(model: CpuModel) -> tvm.transform.Pass:
    """Round the output channels of convolutions and matmuls with constant weights up to whole
    vector registers with zero filters, and slice the extra channels off the result.

    Pruning leaves channel counts like 45 or 461; a micro-kernel tile needs a whole number of
    registers (a tile with a bounds check, or an odd vector width, runs as scalar code). The
    slice costs one pass over the output; the zero filters at most ``lanes - 1`` channels. A
    depthwise convolution has its input channels padded too.
    """
    conv2d, matmul = tvm.ir.Op.get("relax.nn.conv2d"), tvm.ir.Op.get("relax.matmul")
    lanes = model.lanes

    def pad_axis(array: np.ndarray, axis: int, extra: int) -> np.ndarray:
        width = [(0, 0)] * array.ndim
        width[axis] = (0, extra)
        return np.pad(array, width)

    @relax.expr_functor.mutator
    class Pad(relax.PyExprMutator):
        def visit_call_(self, call):
            call = self.visit_expr_post_order(call)
            if not isinstance(call, relax.Call) or len(call.args) < 2 or not isinstance(call.args[1], tvm.ir.GenericConst):
                return call
            weights = call.args[1].value.numpy()
            data = call.args[0]
            if call.op.same_as(conv2d) and call.attrs.kernel_layout == "OIHW" and call.attrs.data_layout == "NCHW":
                channels, axis = weights.shape[0], 1
                extra = -channels % lanes
                groups = int(call.attrs.groups)
                if not extra:
                    return call
                if groups == 1:
                    attrs = call.attrs
                elif groups == channels and weights.shape[1] == 1:  # depthwise: pad its input too
                    width = [0] * (2 * len(call.ty.shape.values))
                    width[2 * axis + 1] = extra
                    data = self.builder_.emit(relax.op.nn.pad(data, width))
                    attrs = _with_groups(call, channels + extra)
                else:
                    return call
                wide = pad_axis(weights, 0, extra)
            elif call.op.same_as(matmul) and weights.ndim == 2:
                channels, axis = weights.shape[1], len(call.ty.shape.values) - 1
                extra = -channels % lanes
                if not extra:
                    return call
                attrs, wide = call.attrs, pad_axis(weights, 1, extra)
            else:
                return call
            wider = relax.Call(call.op, [data, relax.const(wide, dtype=str(wide.dtype))], attrs, call.ty_args)
            return relax.op.strided_slice(self.builder_.emit(wider), [axis], [0], [channels])

    @tvm.transform.module_pass(opt_level=0, name="IrtoolPadChannels")
    def pad(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        mutator = Pad(mod)
        for gvar, func in mod.functions_items():
            if isinstance(func, relax.Function):
                mod[gvar] = mutator.visit_expr(func)
        return mod

    return pad


def _with_groups(call, groups: int):
    """The attributes of a conv2d call with another group count."""
    a = call.attrs
    rebuilt = relax.op.nn.conv2d(
        call.args[0], call.args[1], strides=a.strides, padding=a.padding, dilation=a.dilation, groups=groups,
        data_layout=a.data_layout, kernel_layout=a.kernel_layout, out_layout=a.out_layout,
        out_dtype=a.out_dtype if str(a.out_dtype) else None,
    )  # fmt: skip
    return rebuilt.attrs


# -- the pass ----------------------------------------------------------------------------------
def cpu_schedule_pass(model: CpuModel) -> tvm.transform.Pass:
    """A module pass scheduling every unscheduled PrimFunc, repacking constant weights it tiles."""

    @tvm.transform.module_pass(opt_level=0, name="IrtoolCpuSchedule")
    def schedule(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        constant_params = _constant_params(mod)
        packs: dict[tvm.ir.GlobalVar, dict[int, int]] = {}
        updates = {}
        for gvar, func in mod.functions_items():
            if not isinstance(func, tirx.PrimFunc) or func.attrs.get("tirx.is_scheduled"):
                continue
            scheduled, packed = _schedule_func(func, model, constant_params.get(gvar, frozenset()))
            updates[gvar] = scheduled.with_attr("tirx.is_scheduled", True)
            if packed:
                packs[gvar] = packed
        for gvar, func in updates.items():
            if gvar not in packs:
                mod[gvar] = func
        renamed = {}
        if packs:
            # A repacked function has new parameter types, so it needs a new GlobalVar (a
            # GlobalVar keeps the type it was created with); the builder types the new one.
            for gvar in packs:
                del mod[gvar]
            builder = relax.BlockBuilder(mod)
            for gvar in packs:
                renamed[gvar] = builder.add_func(updates[gvar], gvar.name_hint)
            mod = builder.get()
            mod = _repack_constants(mod, packs, renamed)
        return mod

    return schedule


def _constant_params(mod: tvm.IRModule) -> dict[tvm.ir.GlobalVar, frozenset[int]]:
    """For each PrimFunc, the parameter positions that every call site fills with a constant."""
    seen: dict[tvm.ir.GlobalVar, set[int]] = {}

    def visit(expr):
        if isinstance(expr, relax.Call) and expr.op.same_as(_CALL_TIR):
            gvar, args = expr.args[0], expr.args[1]
            fields = list(args.fields) if isinstance(args, relax.Tuple) else [args]
            constant = {i for i, a in enumerate(fields) if isinstance(a, tvm.ir.GenericConst)}
            seen[gvar] = constant if gvar not in seen else seen[gvar] & constant

    for _, func in mod.functions_items():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)
    return {g: frozenset(s) for g, s in seen.items()}


def _repack_constants(mod: tvm.IRModule, packs: dict, renamed: dict) -> tvm.IRModule:
    """Call the repacked functions, with their weights in panel layout (constants, so free)."""

    @relax.expr_functor.mutator
    class Repack(relax.PyExprMutator):
        def visit_call_(self, call):
            call = self.visit_expr_post_order(call)
            if not (isinstance(call, relax.Call) and call.op.same_as(_CALL_TIR)):
                return call
            plan = packs.get(call.args[0])
            if not plan:
                return call
            fields = list(call.args[1].fields)
            for index, panel in plan.items():
                packed = pack_panels(fields[index].value.numpy(), panel)
                fields[index] = relax.const(packed, dtype=str(packed.dtype))
            return relax.Call(call.op, [renamed[call.args[0]], relax.Tuple(fields), *call.args[2:]], call.attrs, call.ty_args)

    repack = Repack(mod)
    for gvar, func in mod.functions_items():
        if isinstance(func, relax.Function):
            mod[gvar] = repack.visit_expr(func)
    return mod


def pack_panels(array: np.ndarray, panel: int) -> np.ndarray:
    """``[..., N] -> [N / panel, ..., panel]``: one contiguous panel per tile of N."""
    *lead, n = array.shape
    blocked = array.reshape(*lead, n // panel, panel)
    return np.moveaxis(blocked, -2, 0).copy()


# -- per function ------------------------------------------------------------------------------
class _NotApplicable(Exception):
    """A block does not have the form a schedule expects; it keeps a simpler schedule."""


def _schedule_func(func: tirx.PrimFunc, model: CpuModel, constant_params: frozenset[int]):
    """(scheduled function, {parameter index: panel width} of the weights it repacked)."""
    sch = s_tir.Schedule(func)
    try:
        sch.get_sblock("root")
    except RuntimeError:  # hand-written TIR (sorting, scans) without the usual block structure
        return func, {}
    _inline_spatial(sch)
    packed: dict[int, int] = {}
    kernels = [b for b in _root_blocks(sch) if _is_multiply_accumulate(sch, b)]
    if len(kernels) == 1:
        name = sch.get(kernels[0]).name_hint
        trial = sch.copy()
        try:
            packed = _schedule_multiply_accumulate(trial, trial.get_sblock(name), model, constant_params)
            sch = trial
        except (_NotApplicable, RuntimeError):
            packed = {}
    for name in [sch.get(b).name_hint for b in _root_blocks(sch)]:
        if _is_placed(sch, sch.get_sblock(name)):
            continue
        trial = sch.copy()
        try:
            _schedule_generic(trial, trial.get_sblock(name), model)
            sch = trial
        except (_NotApplicable, RuntimeError):
            pass
    return sch.mod["main"], packed


def _root_blocks(sch: s_tir.Schedule) -> list:
    return list(sch.get_child_blocks(sch.get_sblock("root")))


def _is_placed(sch: s_tir.Schedule, block) -> bool:
    """Whether the block already sits in a scheduled loop nest (parallel, vector or unrolled)."""
    return any(sch.get(loop).kind != tirx.ForKind.SERIAL for loop in sch.get_loops(block))


def _kinds(block) -> list[str]:
    names = {tirx.IterVar.DataPar: "S", tirx.IterVar.CommReduce: "R"}
    return [names.get(iv.iter_type, "O") for iv in block.iter_vars]


def _extent(expr) -> int:
    if not isinstance(expr, tirx.IntImm):
        raise _NotApplicable("symbolic extent")
    return int(expr)


def _uses(expr, var) -> bool:
    return any(v.same_as(var) for v in tirx.analysis.undefined_vars(expr))


def _has_condition(block) -> bool:
    """A padding block: ``if_then_else`` in its value (inlining it puts a branch in the consumer)."""
    body = block.body
    return isinstance(body, tirx.BufferStore) and not isinstance(body.value, tvm.ir.TensorLoad)


def _inline_spatial(sch: s_tir.Schedule) -> None:
    """Inline data-parallel blocks into their only consumer, so chains of elementwise ops run as
    one loop nest. Padding in front of a convolution stays a copy (a branch per broadcast input
    would cost more), except for a depthwise one, whose few FMAs per input cannot pay for it."""
    changed = True
    while changed:
        changed = False
        for block in _root_blocks(sch):
            stmt = sch.get(block)
            if set(_kinds(stmt)) != {"S"}:
                continue
            consumers = list(sch.get_consumers(block))
            if len(consumers) != 1:
                continue
            consumer = consumers[0]
            if (
                _has_condition(stmt)
                and _is_multiply_accumulate(sch, consumer)
                and not _read_along_vector_axis(sch.get(consumer), stmt.writes[0].source)
            ):
                continue
            try:
                sch.compute_inline(block)
            except RuntimeError:
                continue
            changed = True
            break


def _loaded(expr):
    """The load an operand reads, through an inlined padding ``if_then_else``; None otherwise."""
    if isinstance(expr, tvm.ir.Call) and expr.op.same_as(_IF_THEN_ELSE):
        expr = expr.args[1]
    return expr if isinstance(expr, tvm.ir.TensorLoad) else None


def _read_along_vector_axis(stmt, buffer) -> bool:
    """Whether the block reads ``buffer`` at positions that move with its vector (last spatial) axis."""
    vector_var = [iv for iv, k in zip(stmt.iter_vars, _kinds(stmt)) if k == "S"][-1].var
    return any(
        r.source.same_as(buffer) and any(_uses(d.min, vector_var) for d in r.region) for r in stmt.reads
    )


def _is_multiply_accumulate(sch: s_tir.Schedule, block) -> bool:
    """``C[s...] += A[...] * B[...]`` over reduction axes, C contiguous along its last spatial axis."""
    stmt = sch.get(block)
    kinds = _kinds(stmt)
    if "R" not in kinds or "S" not in kinds or "O" in kinds or len(stmt.writes) != 1:
        return False
    store = stmt.body
    if not isinstance(store, tirx.BufferStore) or not isinstance(store.value, tirx.Add):
        return False
    acc, product = store.value.a, store.value.b
    if isinstance(acc, tirx.Mul):
        acc, product = product, acc
    if not (isinstance(acc, tvm.ir.TensorLoad) and acc.source.same_as(store.buffer) and isinstance(product, tirx.Mul)):
        return False
    a, b = _loaded(product.a), _loaded(product.b)
    if a is None or b is None or a.source.same_as(b.source):
        return False  # a sum of squares (variance) is a reduction, not a product of two operands
    spatial = [iv.var for iv, k in zip(stmt.iter_vars, kinds) if k == "S"]
    last = store.indices[-1]
    return isinstance(last, tvm.ir.Var) and last.same_as(spatial[-1])


# -- multiply-accumulate micro-kernel ----------------------------------------------------------
def choose_tile(rows: int, row_last: int, n: int, k: int, model: CpuModel) -> tuple[int, int]:
    """(mr, nr): output rows x output channels one micro-kernel keeps in registers.

    Both divide their extents, so no tile needs a bounds check. ``nr`` is a number of whole
    vector registers, or a short power-of-two vector when ``n`` allows nothing else
    (``pad_channels_pass`` rounds the channels of weighted layers up so it rarely has to); a tile
    of ``mr`` rows covers part of one image row or whole image rows, so its input window is a
    rectangle. Scored by the fraction of peak FMA throughput: ``acc`` independent accumulators
    hide FMA latency once there are 8 of them; each reduction step loads ``nr / lanes`` weight
    vectors and broadcasts ``mr`` inputs, two loads per cycle. A weight panel (``k x nr``)
    larger than half of L2 is penalised: it must stay cached while the rows stream past.
    """
    lanes = model.lanes
    widths = [w * lanes for w in range(1, 9) if n % (w * lanes) == 0]
    widths = widths or [next(w for w in (lanes // 2, lanes // 4, 2, 1) if w >= 1 and n % w == 0)]
    heights = [
        m
        for m in range(1, model.accumulators + 1)
        if rows % m == 0 and (row_last % m == 0 or (m % row_last == 0 and (rows // row_last) % (m // row_last) == 0))
    ]
    best = None
    for nr in widths:
        vectors = -(-nr // lanes)
        for mr in heights:
            acc = mr * vectors
            if acc > model.accumulators:
                continue
            cycles = max(acc / 2, (vectors + mr) / 2, 4)
            efficiency = acc / (2 * cycles) * nr / (vectors * lanes)
            if k * nr * 4 > model.l2_bytes // 2:
                efficiency *= 0.5
            key = (round(efficiency, 3), acc, nr == 2 * lanes, nr)
            if best is None or key > best[0]:
                best = (key, mr, nr)
    return best[1], best[2]


def _schedule_multiply_accumulate(sch: s_tir.Schedule, block, model: CpuModel, constant_params: frozenset[int]) -> dict[int, int]:
    stmt = sch.get(block)
    kinds = _kinds(stmt)
    spatial = [iv for iv, k in zip(stmt.iter_vars, kinds) if k == "S"]
    reduction = [iv for iv, k in zip(stmt.iter_vars, kinds) if k == "R"]
    extents = [_extent(iv.dom.extent) for iv in spatial]
    n, rows = extents[-1], int(np.prod(extents[:-1], dtype=np.int64))
    row_last = extents[-2] if len(extents) > 1 else 1
    k = int(np.prod([_extent(iv.dom.extent) for iv in reduction], dtype=np.int64))
    mr, nr = choose_tile(rows, row_last, n, k, model)
    vector_var = spatial[-1].var
    out = stmt.body.buffer
    operands = [r for r in stmt.reads if not r.source.same_as(out)]
    panels = [i for i, r in enumerate(stmt.reads) if not r.source.same_as(out) and any(_uses(d.min, vector_var) for d in r.region)]
    weight_bytes = sum(_bytes(stmt.reads[i].source) for i in panels)
    input_bytes = sum(_bytes(r.source) for r in operands) - weight_bytes

    packed = _pack_weights(sch, block, panels, nr, constant_params)
    write_back = sch.cache_write(block, 0, "global")
    _fold_epilogue(sch, write_back)

    loops = sch.get_loops(write_back)
    j_outer, j_inner = sch.split(loops[-1], [None, nr])
    row_loops = list(loops[:-1])
    if row_loops:
        if mr > row_last:
            h_outer, h_inner = sch.split(row_loops[-2], [None, mr // row_last])
            outer, inner = row_loops[:-2] + [h_outer], [h_inner, row_loops[-1]]
        else:
            w_outer, w_inner = sch.split(row_loops[-1], [None, mr])
            outer, inner = row_loops[:-1] + [w_outer], [w_inner]
        # Rows outer re-reads the weights once per row tile, channels outer re-reads the inputs
        # once per channel tile; re-reads that stay in L2 are cheap.
        cached = lambda size: 0.2 if size <= model.l2_bytes * 3 // 4 else 1.0  # noqa: E731
        rows_outer = weight_bytes * (rows / mr) * cached(weight_bytes)
        channels_outer = input_bytes * (n / nr) * cached(input_bytes)
        if rows_outer <= channels_outer:
            sch.reorder(*outer, j_outer, *inner, j_inner)
            tiles = sch.fuse(*outer, j_outer)
        else:
            sch.reorder(j_outer, *outer, *inner, j_inner)
            tiles = sch.fuse(j_outer, *outer)
    else:
        tiles = j_outer
    sch.parallel(tiles)
    _vectorize_registers(sch, j_inner, nr, model.lanes)
    sch.compute_at(block, tiles, preserve_unit_loops=True)
    nest = sch.get_loops(block)[1:]
    tile_loops, reduce_loops = nest[: len(spatial)], nest[len(spatial) :]
    sch.reorder(*reduce_loops, *tile_loops)
    for loop in tile_loops[:-1]:
        sch.unroll(loop)
    _vectorize_registers(sch, tile_loops[-1], nr, model.lanes)
    sch.decompose_reduction(block, reduce_loops[0])
    return packed


def _vectorize_registers(sch: s_tir.Schedule, loop, extent: int, lanes: int) -> None:
    """Vectorise a loop as whole registers: one unrolled step per register of ``lanes`` (LLVM
    splits a wider vector type with shuffles instead of keeping separate registers)."""
    if extent > lanes and extent % lanes == 0:
        registers, loop = sch.split(loop, [None, lanes])
        sch.unroll(registers)
    sch.vectorize(loop)


def _bytes(buffer) -> int:
    return int(np.prod([int(d) for d in buffer.shape], dtype=np.int64)) * tvm.runtime.DataType(str(buffer.dtype)).bits // 8


def _fold_epilogue(sch: s_tir.Schedule, write_back) -> None:
    """Inline the elementwise consumers (bias, BN, activation, residual add) into the write-back."""
    changed = True
    while changed:
        changed = False
        for consumer in sch.get_consumers(write_back):
            try:
                sch.reverse_compute_inline(consumer)
            except RuntimeError:
                continue
            changed = True
            break


def _pack_weights(sch: s_tir.Schedule, block, reads: list[int], nr: int, constant_params: frozenset[int]) -> dict[int, int]:
    """Lay constant weight operands out as ``[N / nr, ..., nr]`` panels; {param index: nr}."""
    func = sch.mod["main"]
    stmt = sch.get(block)
    vector_var = [iv for iv, k in zip(stmt.iter_vars, _kinds(stmt)) if k == "S"][-1].var
    packed = {}
    for read in reads:
        region = stmt.reads[read]
        buffer = region.source
        index = next((i for i, param in enumerate(func.params) if param.same_as(buffer)), None)
        if index is None or index not in constant_params or nr <= 1:
            continue
        dims = [int(d) for d in buffer.shape]
        last = region.region[-1].min
        if dims[-1] % nr or not (isinstance(last, tvm.ir.Var) and last.same_as(vector_var)):
            continue
        if any(_uses(d.min, vector_var) for d in region.region[:-1]):
            continue
        sch.transform_layout(block, ("read", read), lambda *i: (i[-1] // nr, *i[:-1], i[-1] % nr))
        packed[index] = nr
    return packed


# -- everything else ---------------------------------------------------------------------------
def _schedule_generic(sch: s_tir.Schedule, block, model: CpuModel) -> None:
    """Parallel over the outer data-parallel loops; vectors along a contiguous innermost axis."""
    stmt = sch.get(block)
    loops = sch.get_loops(block)
    kinds = _kinds(stmt)
    if not loops or len(loops) != len(kinds) or "O" in kinds:
        raise _NotApplicable("loop nest is not one loop per axis")
    n_spatial = kinds.index("R") if "R" in kinds else len(kinds)
    if "S" in kinds[n_spatial:] or n_spatial == 0:
        raise _NotApplicable("reduction axes are not innermost")
    extents = [_extent(sch.get(loop).extent) for loop in loops]
    work = int(np.prod(extents, dtype=np.int64))
    spatial, reduce_loops = list(loops[:n_spatial]), list(loops[n_spatial:])
    vector = None
    if _branches(stmt) <= 1 and _contiguous_along(stmt, stmt.iter_vars[n_spatial - 1].var, reductions=bool(reduce_loops)):
        lanes = model.lanes
        if extents[n_spatial - 1] % lanes == 0:
            outer, vector = sch.split(spatial[-1], [None, lanes])
            spatial[-1] = outer
        elif extents[n_spatial - 1] <= 4 * lanes and n_spatial > 1:
            vector = spatial.pop()
    if reduce_loops and vector is not None:
        sch.reorder(*spatial, *reduce_loops, vector)
    if vector is not None:
        sch.vectorize(vector)
    if spatial and work >= _PARALLEL_MIN_WORK:
        sch.parallel(sch.fuse(*spatial) if len(spatial) > 1 else spatial[0])
    if reduce_loops and vector is not None:
        # Last: the primitives above need the reduction block whole (with its init).
        sch.decompose_reduction(block, reduce_loops[0])


def _branches(stmt) -> int:
    """``if_then_else`` calls in the block's value: a concat of n inputs has n - 1 of them, and
    vectorising such a chain multiplies code size (and LLVM time) without speeding it up."""
    found = []
    if isinstance(stmt.body, tirx.BufferStore):
        relax.analysis.post_order_visit(
            stmt.body.value, lambda e: found.append(1) if isinstance(e, tvm.ir.Call) and e.op.same_as(_IF_THEN_ELSE) else None
        )
    return len(found)


def _contiguous_along(stmt, var, *, reductions: bool) -> bool:
    """Whether ``var`` is the innermost index of the output and, for a reduction, of every input
    it reads (vectorising a pooling or channel mean in NHWC; not a softmax row)."""
    store = stmt.body
    if not isinstance(store, tirx.BufferStore):
        return False
    if not (isinstance(store.indices[-1], tvm.ir.Var) and store.indices[-1].same_as(var)):
        return False
    if not reductions:
        return True
    for region in stmt.reads:
        if region.source.same_as(store.buffer):
            continue
        last = region.region[-1].min
        if not (isinstance(last, tvm.ir.Var) and last.same_as(var)):
            return False
    return True
