"""The cocotb testbench :class:`host.core_sim.CoreSim` runs the whole-model core's Verilog with.

One test, ``images``: it reads the job :data:`JOB_ENV` names (JSON: each
image's pixels, patch by patch, and the number of classes), and for each
image sends the pixels on the ``pixels`` stream, pulses ``start``, waits
for ``busy`` to fall (a trigger in the simulator: no Python runs while the
core computes), then reads the class and every logit; it writes them, with
each image's cycles from ``start`` to idle, as JSON to the job's ``out``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, FallingEdge, ReadOnly, RisingEdge

#: The environment variable that names the job file.
JOB_ENV = "GSBFLOW_CORE_JOB"
PERIOD_NS = 10


@cocotb.test()
async def images(dut: object) -> None:
    job = json.loads(Path(os.environ[JOB_ENV]).read_text())
    cocotb.start_soon(Clock(dut.clk, PERIOD_NS, unit="ns").start())
    dut.rst.value = 1
    dut.start.value = 0
    dut.pixels__valid.value = 0
    dut.logit_addr.value = 0
    await ClockCycles(dut.clk, 3)
    dut.rst.value = 0
    results = []
    for pixels in job["images"]:
        for pixel in pixels:  # the core takes a pixel a cycle while idle
            await FallingEdge(dut.clk)
            dut.pixels__valid.value = 1
            dut.pixels__payload.value = pixel
        await FallingEdge(dut.clk)
        dut.pixels__valid.value = 0
        dut.start.value = 1
        await FallingEdge(dut.clk)
        dut.start.value = 0
        started = cocotb.utils.get_sim_time("ns")
        while True:  # a zero-time glitch of the combinational busy is no end: it must stay low
            await FallingEdge(dut.busy)
            await ReadOnly()
            if not dut.busy.value:
                break
        cycles = round((cocotb.utils.get_sim_time("ns") - started) / PERIOD_NS)
        logits = []
        for k in range(job["classes"]):
            await FallingEdge(dut.clk)
            dut.logit_addr.value = k
            await RisingEdge(dut.clk)
            await ReadOnly()
            logits.append(dut.logit.value.to_signed())
        results.append({"class": int(dut.klass.value), "logits": logits, "cycles": cycles})
    Path(job["out"]).write_text(json.dumps(results))
