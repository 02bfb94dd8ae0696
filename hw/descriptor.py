"""A program descriptor as the gateware stores it: only the bits the configuration uses.

The three stream words of a descriptor (:func:`hw.isa.descriptor`) are
unpacked once, when LOAD_PROG writes them (:mod:`hw.decoder`), into
:func:`descriptor_layout`; the engine (:mod:`hw.engine`) reads that form.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Value, signed
from amaranth.lib import data

from hw.config import AccelConfig
from hw.isa import DESC_FIELD_STARTS


def descriptor_layout(config: AccelConfig) -> data.StructLayout:
    """The fields of a stored descriptor (only the bits the configuration uses)."""
    return data.StructLayout({
        "x_base": config.addr_bits(config.x_depth),
        "y_base": config.addr_bits(config.y_depth),
        "shift": config.shift_bits,
        "cmode": 1,
        "coef": signed(config.coef_bits),
    })


def unpack_descriptor(config: AccelConfig, raw: Value) -> Value:
    """The stored form (:func:`descriptor_layout`) of a descriptor's three stream words."""
    layout = descriptor_layout(config)
    return Cat(*(raw[DESC_FIELD_STARTS[name]:DESC_FIELD_STARTS[name] + field.width] for name, field in layout))


def stored_descriptor(config: AccelConfig, words: list[int] | tuple[int, ...]) -> int:
    """:func:`unpack_descriptor` in Python: a descriptor's three stream words as the program buffer keeps
    them (an on-chip program's descriptors, written without the decoder)."""
    raw = sum(w << (32 * k) for k, w in enumerate(words))
    stored, offset = 0, 0
    for name, field in descriptor_layout(config):
        stored |= ((raw >> DESC_FIELD_STARTS[name]) & ((1 << field.width) - 1)) << offset
        offset += field.width
    return stored
