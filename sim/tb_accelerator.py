"""cocotb testbenches of the generated accelerator Verilog.

In the style of cocotb's ``matrix_multiplier`` example: a :class:`Driver`
puts command words on ``cmd``, a :class:`Monitor` takes answer words from
``rsp``, both stalling at random; the reference is the golden model (whole
layers) or :class:`sim.reference.AcceleratorModel` (random commands), and a
:class:`Checker` counts every mismatch, lost and duplicated word.

Both stream sides act at the falling clock edge: the decoder's ``ready`` and
``valid`` depend on its state only, so a value sampled there decides the
transfer at the next rising edge.  While ``cmd.ready`` or ``rsp.valid`` is
low the coroutines wait for it to rise instead of polling every cycle.
Run through :mod:`sim.runner` (pytest: ``tests/sim``).
"""

from __future__ import annotations

import itertools
import json
import os
import random
import time
from collections import defaultdict
from pathlib import Path

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.simtime import get_sim_time
from cocotb.triggers import Event, FallingEdge, RisingEdge

from hw import cycles
from hw.config import AccelConfig
from hw.isa import Op, header, run_args
from hw.program import (
    compile_chunks,
    compile_layer,
    decode_result,
    load_words,
    read_words,
    response_length,
    run_words,
)
from model import golden
from sim.ops import random_operand, random_ops
from sim.reference import AcceleratorModel
from sim.runner import REPORT_ENV, config_from_env

PERIOD_NS = 10


def cycle() -> int:
    """The current clock cycle."""
    return int(get_sim_time(unit="ns")) // PERIOD_NS


class Driver:
    """Sends words on ``cmd``; idles a cycle before a word with probability ``stall``."""

    def __init__(self, dut: object, rng: random.Random, stall: float) -> None:
        self.dut, self.rng, self.stall = dut, rng, stall
        self.accepted: list[int] = []  # the cycle each word was taken

    async def send(self, words: list[int]) -> None:
        dut = self.dut
        for word in words:
            while self.rng.random() < self.stall:
                dut.cmd__valid.value = 0
                await FallingEdge(dut.clk)
            dut.cmd__valid.value = 1
            dut.cmd__payload.value = word
            while not dut.cmd__ready.value:
                await RisingEdge(dut.cmd__ready)
                await FallingEdge(dut.clk)
            await FallingEdge(dut.clk)
            self.accepted.append(cycle() - 1)
        dut.cmd__valid.value = 0


class Monitor:
    """Takes words from ``rsp`` whenever ``expected > len(words)``; refuses with probability ``stall``."""

    def __init__(self, dut: object, rng: random.Random, stall: float) -> None:
        self.dut, self.rng, self.stall = dut, rng, stall
        self.words: list[int] = []
        self.stamps: list[int] = []
        self.expected = 0
        self._more = Event()

    def expect(self, count: int) -> None:
        self.expected += count
        self._more.set()

    async def run(self) -> None:
        dut = self.dut
        while True:
            if len(self.words) >= self.expected:
                dut.rsp__ready.value = 0
                self._more.clear()
                await self._more.wait()
                await FallingEdge(dut.clk)
            if not dut.rsp__valid.value:
                await RisingEdge(dut.rsp__valid)
                await FallingEdge(dut.clk)
            ready = self.rng.random() >= self.stall
            dut.rsp__ready.value = int(ready)
            if ready:
                self.words.append(int(dut.rsp__payload.value))
                self.stamps.append(cycle())
            await FallingEdge(dut.clk)


class Checker:
    """Counts errors instead of stopping at the first; :meth:`done` asserts there were none."""

    def __init__(self, log: object) -> None:
        self.log = log
        self.errors = 0
        self.checked = 0

    def equal(self, got: object, expected: object, what: str) -> None:
        self.checked += 1
        if not np.array_equal(np.asarray(got), np.asarray(expected)):
            self.errors += 1
            if self.errors <= 10:
                self.log.error("%s: got %s, expected %s", what, got, expected)

    def done(self) -> None:
        self.log.info("checker: %d checks, %d errors", self.checked, self.errors)
        assert self.errors == 0, f"{self.errors} of {self.checked} checks failed"


class Harness:
    """Clock, reset, driver, monitor and checker around the DUT, and the report."""

    def __init__(self, dut: object, seed: int, stall: float) -> None:
        self.dut = dut
        self.config: AccelConfig = config_from_env()
        self.rng = random.Random(seed)
        self.driver = Driver(dut, self.rng, stall)
        self.monitor = Monitor(dut, self.rng, stall)
        self.checker = Checker(dut._log)
        self.ops: dict[str, list[int]] = defaultdict(list)
        self.extra: dict[str, object] = {}
        self._wall = time.perf_counter()
        self._cycle0 = 0

    async def start(self) -> None:
        dut = self.dut
        Clock(dut.clk, PERIOD_NS, unit="ns").start()
        dut.cmd__valid.value = 0
        dut.cmd__payload.value = 0
        dut.rsp__ready.value = 0
        await self.reset()
        cocotb.start_soon(self.monitor.run())
        self._wall, self._cycle0 = time.perf_counter(), cycle()

    async def reset(self, cycles: int = 2) -> None:
        self.dut.rst.value = 1
        for _ in range(cycles):
            await FallingEdge(self.dut.clk)
        self.dut.rst.value = 0

    async def command(self, kind: str, words: list[int], answers: int = 0) -> list[int]:
        """Send one command and wait for its answers; records its cycles under ``kind``."""
        first = len(self.driver.accepted)
        taken = len(self.monitor.words)
        self.monitor.expect(answers)
        await self.driver.send(words)
        while len(self.monitor.words) < taken + answers:
            await FallingEdge(self.dut.clk)
        if answers:
            end = self.monitor.stamps[-1]
        else:  # done when the decoder takes the next command (a RUN: when the engine is done)
            while not self.dut.cmd__ready.value:
                await RisingEdge(self.dut.cmd__ready)
                await FallingEdge(self.dut.clk)
            end = max(self.driver.accepted[-1], cycle() - 1)
        self.ops[kind].append(end - self.driver.accepted[first] + 1)
        return self.monitor.words[taken:taken + answers]

    async def layer(self, name: str, groups_x: list, groups_y: list, coefs: np.ndarray,
                    thresholds: tuple | None = None, reference: np.ndarray | None = None) -> dict:
        """Load, run and read a layer; check it against ``reference`` (default: the golden model).

        A layer whose result does not fit the result buffer runs in column
        chunks (:func:`hw.program.compile_chunks`), as the host does.
        """
        c = self.config
        chunks = compile_chunks(c, groups_x, groups_y, coefs, thresholds)
        await self.command("reset", [header(Op.RESET)])
        parts = []
        stats = defaultdict(int)
        for _, image in chunks:
            await self.command("load", load_words(c, image))
            await self.command("run", run_words(c, image))
            parts.append(decode_result(c, image, await self.command("read", read_words(image), response_length(c, image))))
            for key in ("load", "run", "read"):
                stats[f"{key}_cycles"] += self.ops[key][-1]
            for key in ("items", "blocks"):
                stats[key] += getattr(image, key)
        lo, hi = await self.command("read_cycles", [header(Op.READ_CYCLES)], 2)
        busy = lo | hi << 32
        if reference is None:
            reference = golden.layer_output(groups_x, groups_y, coefs)
            if thresholds is not None:
                reference = golden.apply_threshold(reference, *thresholds)
        self.checker.equal(np.concatenate(parts, axis=1), reference, f"{name}: result")
        self.checker.equal(busy, sum(image.busy_cycles(c) for _, image in chunks), f"{name}: busy cycles")
        self.dut._log.info("%s: %d runs, %d items, %d busy cycles, load %d, run %d, read %d cycles", name, len(chunks),
                           stats["items"], busy, stats["load_cycles"], stats["run_cycles"], stats["read_cycles"])
        image = chunks[0][1]
        return {**stats, "busy_cycles": busy, "runs": len(chunks), "passes": image.passes, "words": image.words,
                "rows_x": image.rows_x, "rows_y": groups_y[0].rows}

    def finish(self, name: str) -> None:
        """Log cycles per operation and simulation speed, write the report, then check."""
        cycles = cycle() - self._cycle0
        wall = time.perf_counter() - self._wall
        per_op = {k: {"count": len(v), "mean_cycles": float(np.mean(v))} for k, v in sorted(self.ops.items())}
        for kind, stats in per_op.items():
            self.dut._log.info("%-12s %6d ops, %8.1f cycles each", kind, stats["count"], stats["mean_cycles"])
        self.dut._log.info("simulated %d cycles in %.1f s: %.0f cycles/s", cycles, wall, cycles / wall)
        path = os.environ.get(REPORT_ENV)
        if path:
            report = json.loads(Path(path).read_text()) if Path(path).exists() else {}
            report[name] = {"ops": per_op, "cycles": cycles, "wall_s": wall, "cycles_per_s": cycles / wall,
                            "config": json.loads(os.environ["GSBFLOW_HW_CONFIG"]), **self.extra}
            Path(path).write_text(json.dumps(report, indent=1, sort_keys=True))
        self.checker.done()


def random_thresholds(rng: np.random.Generator, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Folded random scales and biases; with ``y`` itself, thresholds equal to its first row."""
    cols = y.shape[1]
    return golden.fold_threshold(rng.normal(size=cols), rng.normal(size=cols) * y.std(), int(y.min()) - 1, int(y.max()) + 1)


def equal_thresholds(rng: np.random.Generator, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Thresholds that ``y``'s first row meets exactly, in random directions (the ``>=`` edge)."""
    directions = rng.choice(np.array([-1, 1], dtype=np.int8), y.shape[1])
    return directions * y[0], directions


@cocotb.test()
async def smoke(dut: object) -> None:
    """One short layer with stalls on both streams (part of ``make test``)."""
    h = Harness(dut, seed=1, stall=0.3)
    await h.start()
    rng = np.random.default_rng(1)
    wb = h.config.word_bits
    gx = [random_operand(rng, "ternary", 2, wb + 3, wb)]
    gy = [random_operand(rng, "bipolar", h.config.lanes + 1, wb + 3, wb)]
    await h.layer("ternary x bipolar", gx, gy, np.array([[-7]]))
    h.finish("smoke")


@cocotb.test()
async def plane_kinds(dut: object) -> None:
    """Every pair of plane kinds and multi-plane encodings; n = 1, n not a multiple of W, the largest n."""
    h = Harness(dut, seed=2, stall=0.2)
    await h.start()
    c = h.config
    rng = np.random.default_rng(2)
    kinds = ("bipolar", "unipolar", "ternary")
    for (kx, ky), n in itertools.product(itertools.product(kinds, kinds), (1, c.word_bits + 3, c.max_n)):
        rows_x = 1 if n == c.max_n else 3
        gx = [random_operand(rng, kx, rows_x, n, c.word_bits)]
        gy = [random_operand(rng, ky, c.lanes if n == c.max_n else c.lanes + 1, n, c.word_bits)]
        coefs = rng.integers(-1000, 1000, (1, 1))
        await h.layer(f"{kx} x {ky}, n={n}", gx, gy, coefs)
    n = 2 * c.word_bits - 1
    for ex, ey in (("int4", "ternary"), ("uint3", "int2"), ("unipolar", "int3")):
        gx = [random_operand(rng, ex, 2, n, c.word_bits), random_operand(rng, "bipolar", 2, n, c.word_bits)]
        gy = [random_operand(rng, ey, 3, n, c.word_bits)]
        coefs = rng.integers(-300, 300, (2, 1))
        y = golden.layer_output(gx, gy, coefs)
        await h.layer(f"{ex}+bipolar x {ey}", gx, gy, coefs)
        await h.layer(f"{ex}+bipolar x {ey}, binary", gx, gy, coefs, random_thresholds(rng, y))
        await h.layer(f"{ex}+bipolar x {ey}, binary at equality", gx, gy, coefs, equal_thresholds(rng, y))
    h.finish("plane_kinds")


@cocotb.test()
async def random_commands(dut: object) -> None:
    """Random commands with random stalls on both streams against the command-level model."""
    count = int(os.environ.get("GSBFLOW_RANDOM_OPS", "10000"))
    h = Harness(dut, seed=3, stall=0.3)
    await h.start()
    model = AcceleratorModel(h.config)
    ops = random_ops(h.rng, h.config, count)
    expected_words = 0
    for kind, words in ops:
        expected = model.execute(words)
        expected_words += len(expected)
        got = await h.command(kind, words, len(expected))
        h.checker.equal(got, expected, f"{kind} {words[:3]}")
    # nothing lost, nothing duplicated: exactly the expected words came, and no more follow
    for _ in range(20):
        await FallingEdge(dut.clk)
    h.checker.equal(len(h.monitor.words), expected_words, "answer words")
    h.checker.equal(int(dut.rsp__valid.value), 0, "rsp.valid after the last answer")
    h.extra["random_ops"] = count
    h.finish("random_commands")


@cocotb.test()
async def reset_mid_command(dut: object) -> None:
    """A reset in the middle of a LOAD, a RUN and a READ; the accelerator then works as new."""
    h = Harness(dut, seed=4, stall=0.2)
    await h.start()
    c = h.config
    rng = np.random.default_rng(4)
    n = 3 * c.word_bits
    gx = [random_operand(rng, "ternary", 3, n, c.word_bits)]
    gy = [random_operand(rng, "bipolar", 2 * c.lanes, n, c.word_bits)]
    coefs = np.array([[5]])
    image = compile_layer(c, gx, gy, coefs)
    loads = load_words(c, image)
    cases = (("load", loads[:len(loads) // 2], 0),
             ("run", loads + run_words(c, image), 0),
             ("read", loads + run_words(c, image) + read_words(image), response_length(c, image)))
    for name, words, answers in cases:
        taken = len(h.monitor.words)
        h.monitor.expect(answers)
        await h.driver.send(words)  # a LOAD cut short, a RUN just started, a READ after its first answer
        if name == "run":
            for _ in range(4):  # the decoder and the engine start the run a few cycles after its last word
                await FallingEdge(dut.clk)
            h.checker.equal(int(dut.busy.value), 1, "the engine is busy when the reset comes")
        while len(h.monitor.words) == taken and answers:
            await FallingEdge(dut.clk)
        h.checker.equal(len(h.monitor.words) - taken < max(answers, 1), True, f"the reset comes during the {name}")
        await h.reset(3)
        h.monitor.expected = len(h.monitor.words)  # the cut command's other answers never come
        for _ in range(5):
            await FallingEdge(dut.clk)
        lo, hi = await h.command("read_cycles", [header(Op.READ_CYCLES)], 2)
        h.checker.equal(lo | hi << 32, 0, f"cycle counter after a reset during the {name}")
        await h.layer(f"after a reset during the {name}", gx, gy, coefs)
    h.finish("reset_mid_command")


@cocotb.test()
async def back_to_back(dut: object) -> None:
    """Commands back to back: no stalls on either stream, layers and reads without gaps."""
    h = Harness(dut, seed=5, stall=0.0)
    await h.start()
    c = h.config
    rng = np.random.default_rng(5)
    n = 2 * c.word_bits + 5
    layers = []
    for kx, ky in (("bipolar", "bipolar"), ("unipolar", "ternary"), ("ternary", "ternary")):
        gx = [random_operand(rng, kx, 2, n, c.word_bits)]
        gy = [random_operand(rng, ky, c.lanes + 2, n, c.word_bits)]
        layers.append((gx, gy, rng.integers(-99, 99, (1, 1))))
    images = [compile_layer(c, *layer) for layer in layers]
    words = [w for image in images for w in load_words(c, image) + run_words(c, image) + read_words(image)]
    answers = sum(response_length(c, image) for image in images)
    got = await h.command("back_to_back", words, answers)
    gaps = np.diff(h.driver.accepted[-len(words):])
    for (gx, gy, coefs), image in zip(layers, images):
        size = response_length(c, image)
        h.checker.equal(decode_result(c, image, got[:size]), golden.layer_output(gx, gy, coefs), "back-to-back layer")
        got = got[size:]
    # loads and reads never wait: the only gaps are the runs (busy) and the reads' answers
    h.extra["cmd_gap_cycles"] = int(np.sum(gaps - 1))
    h.finish("back_to_back")


@cocotb.test()
async def model_layers(dut: object) -> None:
    """The engine layers of the default model, equal to the EmulatorBackend's results."""
    from sim.model_layers import model_layers as calls

    h = Harness(dut, seed=6, stall=0.0)
    await h.start()
    layers = {}
    skipped = {}
    for name, call in calls(h.config.word_bits).items():
        thresholds = None if call.thresholds is None else (call.thresholds.thresholds, call.thresholds.directions)
        try:
            compile_chunks(h.config, call.groups_x, call.groups_y, call.coefs, thresholds)
        except ValueError as error:
            skipped[name] = str(error)
            dut._log.warning("%s does not fit this configuration: %s", name, error)
            continue
        layers[name] = await h.layer(name, list(call.groups_x), list(call.groups_y), call.coefs, thresholds, call.result)
        layers[name]["encodings"] = [[str(g.encoding) for g in call.groups_x], [str(g.encoding) for g in call.groups_y]]
        layers[name]["n"] = call.groups_x[0].n
    h.extra.update(layers=layers, skipped=skipped)
    h.finish("model_layers")


@cocotb.test()
async def engine_speed(dut: object) -> None:
    """Simulation speed with Python out of the loop: one long RUN while the testbench waits for it.

    The busy cycles must still match the cycle model; the operands are
    whatever the buffers hold (their values do not matter here).
    """
    h = Harness(dut, seed=7, stall=0.0)
    await h.start()
    c = h.config
    rows, blocks, words, passes = 64, 8, min(8, c.max_words), min(8, c.prog_depth)
    await h.command("run", [header(Op.RUN)] + run_args(c, rows, blocks, words, passes, 0))
    lo, hi = await h.command("read_cycles", [header(Op.READ_CYCLES)], 2)
    h.checker.equal(lo | hi << 32, cycles.run_cycles(c, cycles.items(rows, blocks, passes, words)), "busy cycles")
    h.finish("engine_speed")
