"""Shared helpers: the Amaranth simulator for the unit tests of ``hw`` and ``bench``."""

from __future__ import annotations

from typing import Callable

import pytest
from amaranth.sim import Simulator


def simulate(dut: object, testbench: Callable, cycles_limit: int = 100_000) -> None:
    """Run one async testbench against ``dut`` with a sync clock."""
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(testbench)
    sim.run_until(cycles_limit * 1e-8)


@pytest.fixture
def run_sim() -> Callable:
    return simulate
