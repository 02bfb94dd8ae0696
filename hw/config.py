"""Parameters of the accelerator and every width derived from them.

All widths come from the numeric contract (:mod:`model.golden`): a lane's
value for one word (``P``, ``C`` or ``D``) needs ``dot_bits(word_bits)``
bits, summed over a row ``dot_bits(max_n)`` with ``max_n`` the longest row
the buffers hold, and the layer accumulator ``layer_accumulator_bits`` of
the design point described in :attr:`AccelConfig.acc_bits`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from model import golden

#: Width of every word on the command and response streams.
STREAM_BITS = 32
#: Width of the signed value fields on the streams (coefficients, offsets,
#: thresholds, results): one bit of a 32-bit word is kept for the direction
#: flag of a threshold, so thresholds (up to ``y_max + 1``) need ``acc_bits + 1 <= 31``.
VALUE_BITS = 31


#: The accelerator's buffers, by name (``AccelConfig.spram``, ``hw.accelerator``).
BUFFERS = ("x", "y", "thresh", "prog", "result")


def _check_int(value: object, name: str, lo: int, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < lo or (hi is not None and value > hi):
        bound = f">= {lo}" if hi is None else f"in {lo}..{hi}"
        raise ValueError(f"{name} must be {bound}, got {value}")
    return int(value)


def ceil_log2(n: int) -> int:
    """Address bits for a memory of depth ``n`` (0 for a depth of 1)."""
    return max(0, (n - 1).bit_length())


@dataclass(frozen=True)
class AccelConfig:
    """Sizes of one accelerator instance.

    ``word_bits`` (SIMD) and ``lanes`` (PE) fold the matrix product FINN
    style: each cycle every lane evaluates the primitive on one ``word_bits``
    word of its own ``y`` row against the ``x`` word broadcast to all lanes.
    Depths are in entries: an operand entry is one word of one plane row, sign
    and mask side by side.  ``y_depth`` is per lane bank.  ``coef_bits`` is
    the signed width of a pass coefficient (default: the 18 bits of
    :class:`model.golden.FixedPoint`), ``shift_bits`` the width of its left
    shift (powers of two in the plane weights and the contract's factor 2
    cost no multiplier bits).
    ``stage_levels`` is how many adder levels of the popcount tree sit
    between two pipeline registers.  With ``count_c`` every lane has a
    second popcount tree for ``C = popcount(m)`` and forms ``D = C - 2P``
    itself, so each plane pair is one pass; without it the lanes have one
    tree and the host adds a separate ``C`` pass for plane pairs with a mask
    (``docs/accelerator.md``, "C: two trees or two passes").
    ``spram`` names the buffers (of :data:`BUFFERS`) that go into the
    single-port SPRAM blocks of an iCE40 UltraPlus when the design is built
    for one; everywhere else (simulation, Verilog, ECP5) it has no effect
    (:class:`hw.buffers.Buffer`).
    With ``check_requests`` the frame bridge checks every request against
    these sizes before running it (:class:`hw.checker.RequestChecker`) and
    refuses a bad one; without it every well-formed frame runs, as the
    host's compiler keeps requests in range, and a RUN count past its bound
    is taken modulo its register (:func:`hw.engine.run_layout`).  The checks
    cost about 660 iCE40 logic cells: the iCEBreaker's preset pays for them
    with its lanes' ``C`` trees and a 36 MHz clock (docs/boards.md).
    ``row_words`` caps the longest row (:attr:`max_words`, and so the
    accumulator's width) below what the buffers could hold: the
    whole-model core (:mod:`hw.core`) keeps many short rows and every
    layer's weights in its buffers; 0 (the default) is ``min(x_depth,
    y_depth)``.
    """

    word_bits: int = 16
    lanes: int = 4
    x_depth: int = 256
    y_depth: int = 128
    thresh_depth: int = 64
    prog_depth: int = 64
    result_depth: int = 256
    coef_bits: int = 18
    shift_bits: int = 4
    stage_levels: int = 2
    count_c: bool = True
    spram: tuple[str, ...] = ()
    check_requests: bool = True
    row_words: int = 0

    def __post_init__(self) -> None:
        golden.check_word_bits(self.word_bits)
        _check_int(self.lanes, "lanes", 1, STREAM_BITS)
        for name in ("x_depth", "y_depth", "thresh_depth", "prog_depth", "result_depth"):
            _check_int(getattr(self, name), name, 1, 1 << 16)
        _check_int(self.coef_bits, "coef_bits", 2, VALUE_BITS)
        _check_int(self.shift_bits, "shift_bits", 0, 5)
        _check_int(self.stage_levels, "stage_levels", 1)
        for flag in ("count_c", "check_requests"):
            if not isinstance(getattr(self, flag), bool):
                raise TypeError(f"{flag} must be a bool, got {type(getattr(self, flag)).__name__}")
        if isinstance(self.spram, str) or not isinstance(self.spram, (tuple, list)):
            raise TypeError(f"spram must be a tuple of buffer names, got {type(self.spram).__name__}")
        unknown = [name for name in self.spram if name not in BUFFERS]
        if unknown or len(set(self.spram)) != len(self.spram):
            raise ValueError(f"spram must name distinct buffers of {BUFFERS}, got {tuple(self.spram)!r}")
        # a list (from JSON, see sim/runner.py) becomes a tuple, so the config stays hashable
        object.__setattr__(self, "spram", tuple(self.spram))
        _check_int(self.row_words, "row_words", 0, min(self.x_depth, self.y_depth))
        if self.acc_bits + 1 > VALUE_BITS:
            raise ValueError(
                f"the accumulator needs {self.acc_bits} bits for max_n={self.max_n} and "
                f"coef_bits={self.coef_bits}; thresholds must fit {VALUE_BITS} bits: "
                f"lower y_depth/x_depth or coef_bits"
            )

    # ---------------------------------------------------------------- sizes

    @property
    def max_words(self) -> int:
        """Most words in one row of a plane: the row must fit both buffers (and ``row_words``, when set)."""
        return self.row_words or min(self.x_depth, self.y_depth)

    @property
    def max_n(self) -> int:
        """The longest vector the buffers hold."""
        return self.max_words * self.word_bits

    @property
    def entry_bits(self) -> int:
        """An operand entry: sign word in the low half, mask word in the high half."""
        return 2 * self.word_bits

    # --------------------------------------------------------------- widths

    @property
    def word_value_bits(self) -> int:
        """A lane's signed value for one word: ``P`` or ``C`` in 0..word_bits, or ``D`` in -word_bits..word_bits."""
        return golden.dot_bits(self.word_bits)

    @property
    def row_value_bits(self) -> int:
        """The same summed over the words of a row: ``dot_bits(max_n)``."""
        return golden.dot_bits(self.max_n)

    @property
    def acc_bits(self) -> int:
        """The layer accumulator.

        Design point: one bipolar x bipolar group pair at ``max_n`` with the
        largest ``coef_bits`` coefficient, so the accumulator holds
        ``Y = c * D`` over the longest vector.  Layers with more groups or
        planes are checked against this width by the host
        (:func:`hw.program.compile_layer`).
        """
        bipolar = golden.Encoding("bipolar")
        coef = np.array([[1 << (self.coef_bits - 1)]], dtype=np.int64)
        return golden.layer_accumulator_bits(self.max_n, [bipolar], [bipolar], coef)

    @property
    def words_bits(self) -> int:
        """Run argument ``words``: 1..max_words."""
        return golden.count_bits(self.max_words)

    @property
    def cycle_bits(self) -> int:
        """The cycle counter (read as two stream words)."""
        return 2 * STREAM_BITS

    def addr_bits(self, depth: int) -> int:
        """Address width of a buffer of ``depth`` entries."""
        return ceil_log2(depth)


#: The default configuration everywhere (simulation, Verilog, the host).
#: The accelerator alone fits the UP5K; with the board top's UART bridge it
#: does not (docs/boards.md), hence :data:`UP5K` for the iCEBreaker.
DEFAULT = AccelConfig()
#: The iCEBreaker's board configuration: the y (weight) buffer fills the
#: UP5K's four 16K x 16 SPRAMs (lanes x 2 x word_bits = 64 bits wide), so the
#: weights of a whole small model stay resident (16384 bank rows); half the
#: default's bits per cycle, since SPRAM gives 64 bits a cycle, not 128.
#: With the bridge's request checks, and so without the lanes' ``C`` trees
#: (``count_c=False``: a separate ``C`` pass for plane pairs with a mask):
#: with both the design packs into 5191 of the UP5K's 5280 logic cells and
#: does not place; without the trees it takes 4961 and meets 36 MHz, the
#: iCEBreaker's clock (40.5 MHz without the checks; docs/boards.md).
UP5K = AccelConfig(
    word_bits=8, lanes=4, x_depth=256, y_depth=16384, thresh_depth=64, prog_depth=64,
    result_depth=256, coef_bits=18, shift_bits=4, spram=("y",), count_c=False,
)
#: A larger instance for the ECP5-85F (100 MHz).
ECP5 = AccelConfig(
    word_bits=32, lanes=16, x_depth=1024, y_depth=64, thresh_depth=64, prog_depth=256,
    result_depth=1024, coef_bits=18, shift_bits=5,
)
#: A tiny instance that synthesises in seconds, for tests and smoke builds.
SMALL = AccelConfig(
    word_bits=8, lanes=2, x_depth=32, y_depth=32, thresh_depth=8, prog_depth=32,
    result_depth=32, coef_bits=12, shift_bits=2, spram=("y",),
)

PRESETS = {"default": DEFAULT, "up5k": UP5K, "ecp5": ECP5, "small": SMALL}


def preset(name: str) -> AccelConfig:
    """A named configuration: ``default``, ``up5k``, ``ecp5`` or ``small``."""
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    if name not in PRESETS:
        raise ValueError(f"name must be one of {sorted(PRESETS)}, got {name!r}")
    return PRESETS[name]
