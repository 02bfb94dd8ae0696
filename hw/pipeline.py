"""Helpers shared by the fixed-latency pipeline stages.

The datapath behind the sequencer never stalls (its only sink, the result
buffer, always accepts), so its stages are ``stream.Signature(...,
always_ready=True)`` streams: ``valid`` plus a payload that carries the data
and a *tag* of sideband fields that each stage delays by its own latency.

Only the ``valid`` bits and the control state are reset; data registers
are ``reset_less`` (every use of them is qualified by a ``valid``), which
keeps the reset net's fan-out to a few hundred flip-flops: on the ECP5 the
reset reaching all ~9,000 was the longest path of the build.
"""

from __future__ import annotations

from amaranth.hdl import Module, Signal, Value
from amaranth.lib import stream


def delay(m: Module, value: Value, cycles: int, name: str = "delay", reset_less: bool = False) -> Value:
    """``value`` delayed by ``cycles`` registers in the sync domain (data: ``reset_less``)."""
    for i in range(cycles):
        reg = Signal.like(value, name=f"{name}_{i}", reset_less=reset_less)
        m.d.sync += reg.eq(value)
        value = reg
    return value


#: Name suffix of the registers made by :func:`duplicate`; the board build
#: marks their flip-flops ``keep`` (``hw.build``), or yosys would merge them.
DUPLICATE_SUFFIX = "_dup"


def duplicate(m: Module, value: Value, copies: int, name: str) -> list[Value]:
    """``copies`` registered copies of ``value`` (reset-less), one per consumer.

    Register duplication: a value that feeds many far-apart sinks (the
    multipliers of every lane) gets one flip-flop per sink, so each copy is
    placed next to its sink and only the copy's own input net is long.
    """
    regs = [Signal.like(value, name=f"{name}{k}{DUPLICATE_SUFFIX}", reset_less=True) for k in range(copies)]
    m.d.sync += [reg.eq(value) for reg in regs]
    return regs


def pipe_signature(payload: object) -> stream.Signature:
    """A pipeline stream: no back-pressure."""
    return stream.Signature(payload, always_ready=True)
