"""cocotb testbenches of the integer units' generated Verilog against :mod:`model.intops`.

One coroutine drives both streams, a cycle at a time: at the falling clock
edge it sets the input side (a value, or a stall) and the output side's
``ready`` (stalling at random), lets the combinational logic settle, and
reads which transfers the next rising edge makes.  The units are small and
their tests short (a few thousand cycles), so per-cycle Python is fast
enough here.  Run through :func:`sim.runner.run_unit` (pytest:
``tests/sim/test_units_sim.py``).
"""

from __future__ import annotations

import os
import random

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, Timer

from hw.intunits import digits_units
from hw.packer import KIND_CODES
from hw.program import code_entries
from hw.transpose import TransposePacker
from model import intops
from model.golden import PlaneKind
from model.intvit import NORM_BITS, RESIDUAL_BITS
from sim.runner import UNIT_ENV

PERIOD_NS = 10


def _pack(fields: list[tuple[int, int]]) -> int:
    """Fields ``(value, bits)``, first field lowest: two's complement, concatenated as Amaranth lays out a struct."""
    word, shift = 0, 0
    for value, bits in fields:
        word |= (value & ((1 << bits) - 1)) << shift
        shift += bits
    return word


async def _stream(dut: object, items: list[int], answers: int, rng: random.Random, stall: float,
                  limit: int = 100_000, unsigned_out: bool = False) -> list[int]:
    """Send ``items`` on ``i`` and take ``answers`` words from ``o``, both sides stalling with probability ``stall``."""
    got: list[int] = []
    sent = 0
    for _ in range(limit):
        await FallingEdge(dut.clk)
        offer = sent < len(items) and rng.random() >= stall
        dut.i__valid.value = int(offer)
        if offer:
            dut.i__payload.value = items[sent]
        take = rng.random() >= stall
        dut.o__ready.value = int(take)
        await Timer(1, "ns")
        if offer and dut.i__ready.value:
            sent += 1
        if take and dut.o__valid.value:
            value = dut.o__payload.value
            got.append(value.to_unsigned() if unsigned_out else value.to_signed())
            if len(got) == answers:
                return got
    raise AssertionError(f"{len(got)} of {answers} answers after {limit} cycles ({sent} of {len(items)} items sent)")


def _layernorm_tokens(rng: np.random.Generator, d: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Tokens at the extremes, identical ones and random ones; gains and biases across the int16 range."""
    lo, hi = intops.signed_range(RESIDUAL_BITS)
    g_lo, g_hi = intops.signed_range(NORM_BITS)
    tokens = np.array([np.full(d, 7), np.resize([lo, hi], d), np.r_[hi, np.full(d - 1, lo)],
                       rng.integers(lo, hi, d, endpoint=True), rng.integers(-40, 40, d)], np.int64)
    gain = rng.integers(g_lo, g_hi, d, endpoint=True)
    bias = rng.integers(g_lo, g_hi, d, endpoint=True)
    return tokens, gain, bias, int(rng.integers(1, 1 << 20))


@cocotb.test()
async def layernorm(dut: object) -> None:
    """Every output of a few tokens equals :func:`model.intops.layer_norm`, with both sides stalling."""
    unit = digits_units()[os.environ[UNIT_ENV]]()
    d, nb = unit.dim, unit.norm_bits
    rng = np.random.default_rng(3)
    tokens, gain, bias, eps = _layernorm_tokens(rng, d)
    dut.eps.value = eps
    await _reset(dut)
    items = []
    for x in tokens:  # each token twice: the statistics, then the outputs
        items += [_pack([(int(v), unit.in_bits), (0, nb), (0, nb)]) for v in x]
        items += [_pack([(int(v), unit.in_bits), (int(g), nb), (int(b), nb)]) for v, g, b in zip(x, gain, bias)]
    got = await _stream(dut, items, tokens.size, random.Random(5), stall=0.2)
    want = intops.layer_norm(tokens, gain, bias, eps).reshape(-1)
    wrong = [k for k, (g, w) in enumerate(zip(got, want)) if g != w]
    assert not wrong, f"{len(wrong)} of {len(want)} outputs differ, first at {wrong[0]}: {got[wrong[0]]} != {want[wrong[0]]}"


async def _reset(dut: object) -> None:
    cocotb.start_soon(Clock(dut.clk, PERIOD_NS, unit="ns").start())
    dut.rst.value = 1
    dut.i__valid.value = 0
    dut.o__ready.value = 0
    for _ in range(2):
        await FallingEdge(dut.clk)
    dut.rst.value = 0


@cocotb.test()
async def packing(dut: object) -> None:
    """The Packer's and the TransposePacker's entries equal the host's (the kind and row length they are built
    with, their ports' initial values), with both sides stalling."""
    unit = digits_units()[os.environ[UNIT_ENV]]()
    kind = unit.plane_kind
    values = {PlaneKind.BIPOLAR: [-1, 1], PlaneKind.UNIPOLAR: [0, 1], PlaneKind.TERNARY: [-1, 0, 1]}[kind]
    rng = np.random.default_rng(6)
    if isinstance(unit, TransposePacker):
        matrices = [rng.choice(values, (unit.rows, unit.cols)) for _ in range(2)]
        want = [e for codes in matrices for e in code_entries(codes.T, kind, unit.word_bits)]
    else:
        matrices = [rng.choice(values, (3, unit.max_n))]
        want = code_entries(matrices[0], kind, unit.word_bits)
    items = [int(c) & ((1 << unit.code_bits) - 1) for codes in matrices for c in codes.ravel()]
    dut.kind.value = KIND_CODES[kind]  # the ports a design around the unit drives (the core: per layer)
    if not isinstance(unit, TransposePacker):
        dut.n.value = unit.max_n
    await _reset(dut)
    got = await _stream(dut, items, len(want), random.Random(7), stall=0.2, unsigned_out=True)
    wrong = [k for k, (g, w) in enumerate(zip(got, want)) if g != w]
    assert len(got) == len(want) and not wrong, f"{len(wrong)} of {len(want)} entries differ"
