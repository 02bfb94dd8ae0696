"""The host side of the hardware/host split: a layer as command words.

The host folds the contract's constants into a *pass program*: for every
group pair ``(g, h)`` and plane pair ``(k, j)`` with ``v = coefs[g, h] *
w_k * w_j``:

* lanes that count ``C`` (``config.count_c``) give ``D = C - 2P``: one
  pass adds ``v * D``;
* otherwise, when neither plane has a mask (bipolar x bipolar), ``C = n``
  is a constant: ``v * n`` goes into the run's ``offset`` and one pass adds
  ``-2v * P``; with a mask a ``C`` pass adds ``v * C`` and, unless both
  planes are unipolar (no sign: ``P = 0``), a ``P`` pass adds ``-2v * P``.

Each pass coefficient is stored as ``q << s`` (``s`` its trailing zero bits,
capped by the shift field), so power-of-two plane weights cost no multiplier
bits.  The hardware then computes ``Y = offset + sum (q * P) << s`` exactly,
which is the contract's ``sum_g sum_h c_gh sum_k sum_j w_k w_j (C - 2P)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from hw import cycles
from hw.config import STREAM_BITS, AccelConfig
from hw.isa import (
    Op,
    descriptor,
    entry_words,
    from_word,
    header,
    run_args,
    threshold_word,
)
from model import golden


class DoesNotFit(ValueError):
    """The configuration cannot hold the layer: its rows, entries, passes, results or
    thresholds exceed a buffer, or a coefficient or partial sum exceeds its width.

    A caller may run such a layer another way (:class:`host.device.DeviceBackend`
    computes it on the host); any other ValueError of the compiler is a caller's error.
    """


@dataclass(frozen=True)
class LayerImage:
    """One layer as buffer contents, a pass program and run arguments."""

    x_entries: tuple[int, ...]
    y_rows: tuple[tuple[int, ...], ...]
    descriptors: tuple[tuple[int, ...], ...]
    thresh_rows: tuple[tuple[int, ...], ...] | None
    rows_x: int
    rows_y: int
    blocks: int
    words: int
    offset: int

    @property
    def binary(self) -> bool:
        """Whether the result is thresholded bits."""
        return self.thresh_rows is not None

    @property
    def passes(self) -> int:
        """Number of passes of the program."""
        return len(self.descriptors)

    @property
    def items(self) -> int:
        """Cycles of lane work: one (row, block, pass, word) item each."""
        return cycles.items(self.rows_x, self.blocks, self.passes, self.words)

    def busy_cycles(self, config: AccelConfig) -> int:
        """The engine's busy cycles for the run of this image (:func:`hw.cycles.run_cycles`)."""
        return cycles.run_cycles(config, self.items)


def _entries(plane: golden.PackedPlane, n: int, word_bits: int) -> np.ndarray:
    """Packed ``(rows, words)`` entries ``mask << word_bits | sign`` with implicit planes filled in."""
    rows = (plane.sign if plane.sign is not None else plane.mask).shape[0]
    valid = np.broadcast_to(golden.valid_mask(n, word_bits), (rows, golden.words_for(n, word_bits)))
    ones = np.full_like(valid, np.iinfo(valid.dtype).max)
    sign = ones if plane.sign is None else plane.sign
    mask = valid if plane.mask is None else plane.mask
    return mask.astype(object) << word_bits | sign.astype(object)


def code_entries(codes: np.ndarray, kind: golden.PlaneKind, word_bits: int) -> list[int]:
    """The entries, row-major, that :func:`compile_layer` lays out for ``codes`` (rows, n) as a single-plane
    operand of ``kind``: what the whole-model gateware's packing stages must produce."""
    (plane,) = golden.pack_planes(np.asarray(codes, np.int64), golden.Encoding(kind.value), word_bits)
    return [int(e) for e in _entries(plane, np.shape(codes)[1], word_bits).ravel()]


def split_coefficient(config: AccelConfig, value: int) -> tuple[int, int]:
    """``value`` as ``(q, s)`` with ``q << s == value`` and ``q`` in ``coef_bits``."""
    shift = 0
    while value and value % 2 == 0 and shift < (1 << config.shift_bits) - 1:
        value //= 2
        shift += 1
    if not -(1 << (config.coef_bits - 1)) <= value < 1 << (config.coef_bits - 1):
        raise DoesNotFit(
            f"coefs: pass coefficient {value} << {shift} does not fit coef_bits={config.coef_bits}"
        )
    return value, shift


def _terms(config: AccelConfig, kx: golden.PlaneKind, ky: golden.PlaneKind, v: int) -> list[tuple[int, bool | None]]:
    """The ``(coefficient, cmode)`` passes of one plane pair; ``cmode None`` is an offset term ``v * n``."""
    if config.count_c:
        return [(v, False)]
    if not (kx.has_mask or ky.has_mask):
        return [(v, None), (-2 * v, False)]
    return [(v, True)] + ([(-2 * v, False)] if kx.has_sign or ky.has_sign else [])


def _check_fits(name: str, used: int, depth: int, what: str) -> None:
    if used > depth:
        raise DoesNotFit(f"{name}: the layer needs {used} {what}, the configuration has {depth}")


def y_layout(config: AccelConfig, groups_y: Sequence[golden.Operand]) -> tuple[list[tuple[int, ...]], list[int]]:
    """The y bank rows of every plane of ``groups_y``, contiguous from row 0, and each plane's first row.

    Plane p occupies ``blocks * words`` bank rows: bank row ``blk * words + t``
    holds word t of y rows ``blk*lanes .. blk*lanes + lanes-1``, lane i in
    bank i.  A host that keeps weights resident uploads these rows once at a
    base of its choosing and passes ``base + first`` as ``y_bases``.
    """
    first_y = groups_y[0]
    if first_y.word_bits != config.word_bits:
        raise ValueError(f"groups_y: word_bits {first_y.word_bits} differs from the configuration's {config.word_bits}")
    n, lanes, wb = first_y.n, config.lanes, config.word_bits
    words, rows_y = golden.words_for(n, wb), first_y.rows
    blocks = cycles.blocks(rows_y, lanes)
    rows: list[tuple[int, ...]] = []
    firsts: list[int] = []
    for gy in groups_y:
        for py in gy.planes:
            firsts.append(len(rows))
            padded = np.zeros((blocks * lanes, words), dtype=object)
            padded[:rows_y] = _entries(py, n, wb)
            rows.extend(tuple(r) for r in padded.reshape(blocks, lanes, words).transpose(0, 2, 1).reshape(-1, lanes).tolist())
    return rows, firsts


def compile_layer(
    config: AccelConfig,
    groups_x: Sequence[golden.Operand],
    groups_y: Sequence[golden.Operand],
    coefs: np.ndarray,
    thresholds: tuple[np.ndarray, np.ndarray] | None = None,
    y_bases: Sequence[int] | None = None,
) -> LayerImage:
    """The buffers, program and run arguments of ``layer_output(groups_x, groups_y, coefs)``.

    ``thresholds`` is ``(thresholds, directions)`` per y row (output column),
    as :func:`model.golden.fold_threshold` returns them, for binary outputs.
    ``y_bases`` gives the first y bank row of every y plane (groups in order,
    planes in order) when the y operand is already in the buffer: the image
    then has no ``y_rows``.  ``None`` lays the planes out from row 0
    (:func:`y_layout`).  Raises :class:`DoesNotFit` when the layer does not fit
    the configuration, ValueError when the arguments are wrong.
    """
    if not isinstance(config, AccelConfig):
        raise TypeError(f"config must be an AccelConfig, got {type(config).__name__}")
    if not groups_x or not groups_y:
        raise ValueError("groups_x and groups_y must each hold at least one Operand")
    first = groups_x[0]
    for gx in groups_x:
        for gy in groups_y:
            golden.check_pair(gx, gy)
    if first.word_bits != config.word_bits:
        raise ValueError(f"groups_x: word_bits {first.word_bits} differs from the configuration's {config.word_bits}")
    coefs = np.asarray(coefs)
    if coefs.shape != (len(groups_x), len(groups_y)) or not np.issubdtype(coefs.dtype, np.integer):
        raise ValueError(f"coefs must be an integer array of shape ({len(groups_x)}, {len(groups_y)})")
    n, lanes, wb = first.n, config.lanes, config.word_bits
    words = golden.words_for(n, wb)
    rows_x, rows_y = groups_x[0].rows, groups_y[0].rows
    blocks = cycles.blocks(rows_y, lanes)
    _check_fits("n", words, config.max_words, "words per row")

    x_entries: list[int] = []
    x_base: dict[int, int] = {}
    for gx in groups_x:
        for px in gx.planes:
            x_base[id(px)] = len(x_entries)
            x_entries.extend(_entries(px, n, wb).ravel().tolist())
    y_planes = [py for gy in groups_y for py in gy.planes]
    y_rows: list[tuple[int, ...]] = []
    if y_bases is None:
        y_rows, y_bases = y_layout(config, groups_y)
    elif len(y_bases) != len(y_planes):
        raise ValueError(f"y_bases must hold one bank row per y plane ({len(y_planes)}), got {len(y_bases)}")
    y_base = {id(py): int(base) for py, base in zip(y_planes, y_bases)}
    _check_fits("groups_x", len(x_entries), config.x_depth, "x entries")
    _check_fits("groups_y", max(y_base.values()) + blocks * words, config.y_depth, "y bank rows")

    offset = 0
    bound = 0
    descs: list[tuple[int, ...]] = []
    for g, gx in enumerate(groups_x):
        for h, gy in enumerate(groups_y):
            for px in gx.planes:
                for py in gy.planes:
                    v = int(coefs[g, h]) * px.weight * py.weight
                    if v == 0:
                        continue
                    for value, cmode in _terms(config, px.kind, py.kind, v):
                        if cmode is None:
                            offset += value * n
                            continue
                        q, s = split_coefficient(config, value)
                        descs.append(tuple(descriptor(config, x_base[id(px)], y_base[id(py)], q, s, cmode)))
                        bound += abs(value) * n
    if not descs:  # an all-zero layer still runs one pass, with coefficient 0
        descs.append(tuple(descriptor(config, 0, 0, 0)))
    _check_fits("coefs", len(descs), config.prog_depth, "passes")
    _check_fits("groups_x", rows_x * blocks, config.result_depth, "result entries")
    if abs(offset) + bound > (1 << (config.acc_bits - 1)) - 1:
        raise DoesNotFit(
            f"coefs: partial sums up to {abs(offset) + bound} do not fit the {config.acc_bits}-bit accumulator"
        )

    thresh_rows = None
    if thresholds is not None:
        t, d = (np.asarray(a).reshape(-1) for a in thresholds)
        if t.shape != (rows_y,) or d.shape != (rows_y,):
            raise ValueError(f"thresholds must hold {rows_y} thresholds and directions, one per y row")
        _check_fits("thresholds", blocks, config.thresh_depth, "threshold blocks")
        tw = [threshold_word(int(t[i]), int(d[i])) for i in range(rows_y)]
        tw += [threshold_word(0, 1)] * (blocks * lanes - rows_y)
        thresh_rows = tuple(tuple(tw[b * lanes:(b + 1) * lanes]) for b in range(blocks))
    return LayerImage(
        tuple(x_entries), tuple(y_rows), tuple(descs), thresh_rows, rows_x, rows_y, blocks, words, offset,
    )


def take_rows(operand: golden.Operand, start: int, stop: int) -> golden.Operand:
    """Rows ``start:stop`` of an operand, every plane sliced alike."""
    planes = tuple(
        golden.PackedPlane(p.kind, p.weight, None if p.sign is None else p.sign[start:stop],
                           None if p.mask is None else p.mask[start:stop])
        for p in operand.planes
    )
    return golden.Operand(operand.encoding, operand.n, operand.word_bits, planes)


def blocks_per_run(config: AccelConfig, rows_x: int) -> int:
    """The y blocks one run may compute for ``rows_x`` x rows: their results must fit the result buffer."""
    blocks = config.result_depth // rows_x
    if blocks == 0:
        raise DoesNotFit(f"groups_x: {rows_x} rows do not fit the {config.result_depth}-entry result buffer")
    return blocks


def layer_cycles(config: AccelConfig, rows_x: int, rows_y: int, n: int, passes: int) -> int:
    """The busy cycles of a layer of ``passes`` passes split into runs as :func:`compile_chunks` splits it.

    Each run computes up to :func:`blocks_per_run` blocks of y rows and costs
    :func:`hw.cycles.run_cycles`; the layer's shape is enough (the benches
    apply it to measured layers on other configurations).
    """
    words = golden.words_for(n, config.word_bits)
    total, per_run = cycles.blocks(rows_y, config.lanes), blocks_per_run(config, rows_x)
    runs = [min(per_run, total - first) for first in range(0, total, per_run)]
    return sum(cycles.run_cycles(config, cycles.items(rows_x, b, passes, words)) for b in runs)


def compile_chunks(
    config: AccelConfig,
    groups_x: Sequence[golden.Operand],
    groups_y: Sequence[golden.Operand],
    coefs: np.ndarray,
    thresholds: tuple[np.ndarray, np.ndarray] | None = None,
    y_bases: Sequence[int] | None = None,
) -> list[tuple[slice, LayerImage]]:
    """:func:`compile_layer` in runs of y rows whose results fit the result buffer.

    Returns ``(columns, image)`` pairs: each image computes the result
    columns ``columns``; concatenated they are the whole layer.  With
    ``y_bases`` (the resident layout of :func:`y_layout` at those bases) a
    chunk starting at y block ``b`` reads every plane from ``base + b * words``.
    """
    if not groups_x or not groups_y:
        raise ValueError("groups_x and groups_y must each hold at least one Operand")
    rows_x, rows_y = groups_x[0].rows, groups_y[0].rows
    step = blocks_per_run(config, rows_x) * config.lanes
    words = golden.words_for(groups_y[0].n, config.word_bits)
    chunks = []
    for start in range(0, rows_y, step):
        cols = slice(start, min(start + step, rows_y))
        part = None if thresholds is None else tuple(np.asarray(a).reshape(-1)[cols] for a in thresholds)
        gy = [take_rows(g, cols.start, cols.stop) for g in groups_y]
        bases = None if y_bases is None else [b + start // config.lanes * words for b in y_bases]
        chunks.append((cols, compile_layer(config, groups_x, gy, coefs, part, bases)))
    return chunks


def stream_words(config: AccelConfig, entries: Iterable[int]) -> list[int]:
    """Operand entries as stream words, ``entry_words`` each, low word first."""
    mask, count = (1 << STREAM_BITS) - 1, entry_words(config)
    return [(e >> (STREAM_BITS * i)) & mask for e in entries for i in range(count)]


def repack(operand: golden.Operand, word_bits: int) -> golden.Operand:
    """The same operand packed in ``word_bits``-bit words (the bits are unchanged)."""
    if operand.word_bits == word_bits:
        return operand

    def again(words: np.ndarray | None) -> np.ndarray | None:
        return None if words is None else golden.pack_bits(golden.unpack_bits(words, operand.n, operand.word_bits), word_bits)

    planes = tuple(golden.PackedPlane(p.kind, p.weight, again(p.sign), again(p.mask)) for p in operand.planes)
    return golden.Operand(operand.encoding, operand.n, word_bits, planes)


def load_words(config: AccelConfig, image: LayerImage, with_x: bool = True, with_y: bool = True) -> list[int]:
    """Commands loading the layer's operands, program and thresholds."""
    out: list[int] = []
    if with_x:
        out += [header(Op.LOAD_X, 0), len(image.x_entries)]
        out += stream_words(config, image.x_entries)
    if with_y:
        out += [header(Op.LOAD_Y, 0), len(image.y_rows)]
        out += stream_words(config, (e for row in image.y_rows for e in row))
    out += [header(Op.LOAD_PROG, 0), image.passes] + [w for d in image.descriptors for w in d]
    if image.thresh_rows is not None:
        out += [header(Op.LOAD_THRESH, 0), image.blocks] + [w for row in image.thresh_rows for w in row]
    return out


def run_words(config: AccelConfig, image: LayerImage) -> list[int]:
    """The RUN command of the layer."""
    return [header(Op.RUN, int(image.binary))] + run_args(
        config, image.rows_x, image.blocks, image.words, image.passes, image.offset)


def read_words(image: LayerImage) -> list[int]:
    """The READ (or READ_BITS) command of the whole result."""
    return [header(Op.READ_BITS if image.binary else Op.READ, 0), image.rows_x * image.blocks]


def response_length(config: AccelConfig, image: LayerImage) -> int:
    """Words that :func:`read_words` answers."""
    return image.rows_x * image.blocks * (1 if image.binary else config.lanes)


def decode_result(config: AccelConfig, image: LayerImage, words: Sequence[int]) -> np.ndarray:
    """The ``(rows_x, rows_y)`` result from the words a read answered."""
    if len(words) != response_length(config, image):
        raise ValueError(f"words must hold {response_length(config, image)} words, got {len(words)}")
    if image.binary:
        bits = [(w >> lane) & 1 for w in words for lane in range(config.lanes)]
        out = np.array(bits, dtype=np.uint8)
    else:
        out = np.array([from_word(w) for w in words], dtype=np.int64)
    return out.reshape(image.rows_x, image.blocks * config.lanes)[:, :image.rows_y]
