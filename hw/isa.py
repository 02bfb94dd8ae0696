"""The command set: opcodes and the word formats of the command stream.

Every command is a header word ``opcode | arg << 8`` followed by argument
words and data words, all ``STREAM_BITS`` (32) wide; see
``docs/accelerator.md`` for the table.  This module is shared by the
hardware (:mod:`hw.decoder`, :mod:`hw.engine`) and the host side
(:mod:`hw.program`, :mod:`host.device`), so the formats are defined once.
It is plain Python (no Amaranth): the host needs it without the HDL stack;
the descriptor's stored form in gateware is :mod:`hw.descriptor`.
"""

from __future__ import annotations

import enum

from hw.config import STREAM_BITS, VALUE_BITS, AccelConfig

ARG_BITS = STREAM_BITS - 8
#: Words of one program descriptor on the stream.
DESC_WORDS = 3
#: Where each field of a descriptor starts, in bits of its three words concatenated.
DESC_FIELD_STARTS = {
    "x_base": 0,
    "y_base": STREAM_BITS,
    "shift": STREAM_BITS + 24,
    "cmode": 2 * STREAM_BITS - 1,
    "coef": 2 * STREAM_BITS,
}


class Op(enum.IntEnum):
    """Opcodes (the low byte of a header word)."""

    LOAD_X = 0x10  # arg: first entry; then count; then count entries
    LOAD_Y = 0x11  # arg: first bank row; then count; then count * lanes entries
    LOAD_THRESH = 0x12  # arg: first block; then count; then count * lanes threshold words
    LOAD_PROG = 0x13  # arg: first descriptor; then count; then count * 3 words
    RUN = 0x20  # arg bit 0: binary output; then 3 words (see run_args)
    READ = 0x30  # arg: first result entry; then count; answers count * lanes values
    READ_BITS = 0x31  # as READ, answers one word per entry: bit i = lane i
    READ_CYCLES = 0x40  # answers the cycle counter, low word first
    RESET = 0x50  # clears the cycle counter


#: The buffer a LOAD opcode writes, in decoder order.
LOAD_OPS = (Op.LOAD_X, Op.LOAD_Y, Op.LOAD_THRESH, Op.LOAD_PROG)


def header(op: Op, arg: int = 0) -> int:
    """The header word of a command."""
    if not isinstance(op, Op):
        raise TypeError(f"op must be an Op, got {type(op).__name__}")
    _check_field(arg, ARG_BITS, "arg")
    return int(op) | arg << 8


def _check_field(value: int, bits: int, name: str, signed: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    if not lo <= value <= hi:
        raise ValueError(f"{name} must fit {bits} {'signed' if signed else 'unsigned'} bits, got {value}")
    return value & ((1 << bits) - 1)


def to_word(value: int) -> int:
    """A signed value as a two's complement stream word."""
    return _check_field(value, STREAM_BITS, "value", signed=True)


def from_word(word: int, bits: int = STREAM_BITS) -> int:
    """The signed value of the low ``bits`` bits of a word."""
    word &= (1 << bits) - 1
    return word - (1 << bits) if word >> (bits - 1) else word


def entry_words(config: AccelConfig) -> int:
    """Stream words per operand entry (``2*word_bits`` bits, low word first)."""
    return -(-config.entry_bits // STREAM_BITS)


def run_args(config: AccelConfig, rows: int, blocks: int, words: int, passes: int, offset: int) -> list[int]:
    """The three argument words of RUN.

    ``rows`` x rows, ``blocks`` blocks of ``lanes`` y rows, ``words`` words
    per row, ``passes`` program descriptors from index 0, and ``offset`` the
    accumulator's start value.
    """
    _check_field(rows, 16, "rows")
    _check_field(blocks, 16, "blocks")
    _check_field(words, min(16, config.words_bits), "words")
    _check_field(passes, 16, "passes")
    _check_field(offset, config.acc_bits, "offset", signed=True)
    return [rows | blocks << 16, words | passes << 16, to_word(offset)]


def descriptor(
    config: AccelConfig, x_base: int, y_base: int, coef: int, shift: int = 0, cmode: bool = False
) -> list[int]:
    """One pass: ``acc += (coef * P) << shift``, the three words on the stream.

    ``P`` is the primitive between the plane rows at ``x_base`` and
    ``y_base``; with ``cmode`` it is ``C = popcount(mask_x & mask_y)``.
    """
    _check_field(x_base, config.addr_bits(config.x_depth), "x_base")
    _check_field(y_base, config.addr_bits(config.y_depth), "y_base")
    _check_field(shift, config.shift_bits, "shift")
    coef = _check_field(coef, config.coef_bits, "coef", signed=True)
    start = DESC_FIELD_STARTS
    word1 = y_base | shift << (start["shift"] - start["y_base"]) | int(bool(cmode)) << (start["cmode"] - start["y_base"])
    return [x_base, word1, coef]


def threshold_word(threshold: int, direction: int) -> int:
    """``bit = direction*Y >= threshold`` as one word, in the form the hardware compares.

    Bit 31 is set for direction -1, bits 0..30 hold a signed ``t`` with
    ``bit = (Y >= t) XOR (direction == -1)``: ``t = threshold`` for direction
    +1, and ``t = 1 - threshold`` for -1 (``-Y >= T`` is ``Y < 1 - T``), so
    the hardware needs one compare and no negation.
    """
    if direction not in (1, -1):
        raise ValueError(f"direction must be 1 or -1, got {direction}")
    _check_field(int(threshold), VALUE_BITS, "threshold", signed=True)
    t = _check_field(int(threshold) if direction > 0 else 1 - int(threshold), VALUE_BITS, "threshold", signed=True)
    return t | (direction < 0) << VALUE_BITS

