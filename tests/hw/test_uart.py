"""UART transmitter into receiver: every byte arrives once, in order; framing errors are flagged."""

from __future__ import annotations

import random

import pytest
from amaranth.hdl import Module
from amaranth.sim import Simulator

from hw.frames import BAUD_TOLERANCE
from hw.uart import UARTReceiver, UARTTransmitter


@pytest.mark.parametrize("divisor", [4, 7])
def test_loopback(divisor):
    m = Module()
    m.submodules.tx = tx = UARTTransmitter(divisor)
    m.submodules.rx = rx = UARTReceiver(divisor)
    m.d.comb += rx.rx.eq(tx.tx)
    data = [random.Random(divisor).randrange(256) for _ in range(40)] + [0x00, 0xFF, 0xA5]
    got = []

    async def send(ctx):
        for b in data:
            ctx.set(tx.data.payload, b)
            ctx.set(tx.data.valid, 1)
            await ctx.tick().until(tx.data.ready)
            ctx.set(tx.data.valid, 0)
            if b & 1:  # idle gaps between some bytes
                await ctx.tick().repeat(divisor * 3)

    async def receive(ctx):
        while True:
            _, _, valid, payload, error = await ctx.tick().sample(rx.data.valid, rx.data.payload, rx.error)
            assert not error
            if valid:
                got.append(payload)

    sim = Simulator(m)
    sim.add_clock(1e-8)
    sim.add_testbench(send)
    sim.add_process(receive)
    sim.run_until(len(data) * divisor * 16 * 1e-8)
    assert got == data


@pytest.mark.parametrize("divisor", [12, 33])   # 3 Mbaud at 36 and 100 MHz
@pytest.mark.parametrize("skew", [-BAUD_TOLERANCE, BAUD_TOLERANCE])
def test_a_line_off_by_the_baud_tolerance_is_received(divisor, skew):
    """Bytes back to back (each start bit right after the last stop bit) from a sender whose rate is off by 2%."""
    rx = UARTReceiver(divisor)
    data = [0x00, 0xFF, 0xA5, 0x5A, 0x01, 0x80] + [random.Random(divisor).randrange(256) for _ in range(10)]
    bit_s = divisor * 1e-8 / (1 + skew)
    got = []

    async def line(ctx):
        await ctx.delay(7 * bit_s)
        for b in data:
            for bit in [0] + [b >> i & 1 for i in range(8)] + [1]:
                ctx.set(rx.rx, bit)
                await ctx.delay(bit_s)

    async def watch(ctx):
        while True:
            _, _, valid, payload, error = await ctx.tick().sample(rx.data.valid, rx.data.payload, rx.error)
            assert not error
            if valid:
                got.append(payload)

    sim = Simulator(rx)
    sim.add_clock(1e-8)
    sim.add_testbench(line)
    sim.add_process(watch)
    sim.run_until((len(data) + 2) * 10 * bit_s + 7 * bit_s)
    assert got == data


def test_framing_error_drops_the_byte():
    rx = UARTReceiver(4)
    events = []

    async def line(ctx):
        for bit in [0] + [1, 0, 1, 0, 1, 0, 1, 0] + [0] + [1] * 3:   # stop bit 0
            ctx.set(rx.rx, bit)
            await ctx.tick().repeat(4)

    async def watch(ctx):
        while True:
            _, _, valid, error = await ctx.tick().sample(rx.data.valid, rx.error)
            if valid or error:
                events.append("byte" if valid else "error")

    sim = Simulator(rx)
    sim.add_clock(1e-8)
    sim.add_testbench(line)
    sim.add_process(watch)
    sim.run_until(80 * 1e-8)
    assert events == ["error"]


def test_divisor_is_checked():
    with pytest.raises(ValueError, match="divisor must be >= 4"):
        UARTReceiver(2)
