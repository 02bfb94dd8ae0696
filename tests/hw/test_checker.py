"""The request checker: which requests the bridge lets through to the accelerator."""

import numpy as np
import pytest
from amaranth.sim import Simulator

from hw.checker import MAX_ANSWERS, RequestChecker, counted_commands
from hw.config import AccelConfig
from hw.isa import LOAD_OPS, Op, descriptor, header

#: Depths 32 (x, y, prog, result) and 8 (thresh), two lanes, one word per operand entry.
CONFIG = AccelConfig(word_bits=8, lanes=2, x_depth=32, y_depth=32, thresh_depth=8, prog_depth=32, result_depth=32)
ACC_MIN = -(1 << (CONFIG.acc_bits - 1))


def run(binary=0, rows=1, blocks=1, words=1, passes=1, offset=0):
    return [header(Op.RUN, binary), rows | blocks << 16, words | passes << 16, offset & 0xFFFF_FFFF]


def load_prog(first, *bases):
    """LOAD_PROG of one descriptor per (x_base, y_base), from descriptor ``first``."""
    words = [w for x, y in bases for w in descriptor(CONFIG, x, y, 1)]
    return [header(Op.LOAD_PROG, first), len(bases), *words]


#: Puts descriptors 0 and 1 back to the bases they have after a reset.
ZERO_BASES = load_prog(0, (0, 0), (0, 0))

GOOD = {
    "nothing": [0],
    "reset": [0, header(Op.RESET)],
    "cycles": [2, header(Op.READ_CYCLES)],
    "read": [2, header(Op.READ, 0), 1],
    "read_bits_at_the_end": [1, header(Op.READ_BITS, 31), 1],
    "load_x_at_the_end": [0, header(Op.LOAD_X, 31), 1, 7],
    "load_y_at_the_end": [0, header(Op.LOAD_Y, 31), 1, 7, 8],
    "load_thresh_at_the_end": [0, header(Op.LOAD_THRESH, 7), 1, 7, 8],
    "load_prog_at_the_end": [0, header(Op.LOAD_PROG, 31), 1, 0, 0, 3],  # bases 0: later runs may use it
    "load_nothing": [0, header(Op.LOAD_X, 32), 0],
    "run_at_every_bound": [0, *run(1, rows=4, blocks=8, words=4, passes=32, offset=ACC_MIN)],
    "run_of_one_long_row": [0, *run(rows=1, blocks=1, words=32)],
    "run_of_many_rows": [0, *run(rows=32, blocks=1, words=1)],
    "run_without_passes_reads_no_rows": [0, *run(rows=3, blocks=1, words=11, passes=0)],
    "run_to_the_ends_of_its_descriptors": [0, *load_prog(0, (16, 24), (0, 0)), *run(rows=2, words=8, passes=2), *ZERO_BASES],
    "run_empty": [0, *run(rows=0, blocks=0, words=0, passes=0)],
    "run_not_binary_past_the_thresholds": [0, *run(0, blocks=9)],
    "mixed": [5, header(Op.READ, 0), 1, *run(), header(Op.READ_BITS, 3), 1, header(Op.READ_CYCLES), header(Op.RESET)],
}
BAD = {
    "answers_without_commands": [5],
    "no_answers_for_a_read": [0, header(Op.READ, 0), 1],
    "too_many_answers": [3, header(Op.READ, 0), 1],
    "answer_count_too_large": [MAX_ANSWERS + 1],
    "answer_count_past_16_bits": [0x1_0000],
    "load_y_past_the_end_wraps": [0, header(Op.LOAD_Y, 32), 1, 7, 8],
    "load_x_past_the_end": [0, header(Op.LOAD_X, 31), 2, 7, 8],
    "load_thresh_past_the_end": [0, header(Op.LOAD_THRESH, 8), 1, 7, 8],
    "load_prog_past_the_end": [0, header(Op.LOAD_PROG, 0xFF_FFFF), 1, 1, 2, 3],
    "read_past_the_end": [2, header(Op.READ, 32), 1],
    "count_past_16_bits": [0, header(Op.LOAD_X, 0), 0x1_0001, 7],
    "load_cut_short": [0, header(Op.LOAD_X, 0), 3, 7],
    "count_missing": [0, header(Op.LOAD_X, 0)],
    "run_cut_short": [0, *run()[:3]],
    "unknown_opcode": [0, 0x77],
    "run_huge": [0, *run(rows=0xFFFF, blocks=0xFFFF, words=0xFFFF, passes=0xFFFF)],
    "run_words": [0, *run(rows=0, words=33)],
    "run_passes": [0, *run(passes=33)],
    "run_binary_past_the_thresholds": [0, *run(1, blocks=9)],
    "run_offset": [0, *run(offset=-ACC_MIN)],
    "run_empty_but_huge": [0, *run(rows=0xFFFF, blocks=0)],
    "run_every_count_at_its_bound": [0, *run(1, rows=32, blocks=8, words=32, passes=32)],
    "run_rows_times_blocks": [0, *run(rows=5, blocks=7)],
    "run_rows_times_words": [0, *run(rows=2, words=17)],
    "run_blocks_times_words": [0, *run(blocks=3, words=11)],
    "run_past_a_descriptors_x_base": [0, *load_prog(0, (0, 0), (17, 0)), *run(rows=2, words=8, passes=2), *ZERO_BASES],
    "run_past_a_descriptors_y_base": [0, *load_prog(1, (0, 25)), *run(blocks=1, words=8, passes=2), *ZERO_BASES],
}


def verdicts(requests, config=CONFIG):
    """The checker's verdict on each request, all in one simulation."""
    dut = RequestChecker(config)
    got = []

    async def bench(ctx):
        for request in requests:
            for k, word in enumerate(request):
                ctx.set(dut.i.payload.word, word)
                ctx.set(dut.i.payload.last, k == len(request) - 1)
                ctx.set(dut.i.valid, 1)
                await ctx.tick().until(dut.i.ready)
            ctx.set(dut.i.valid, 0)
            ctx.set(dut.o.ready, 1)
            verdict, = await ctx.tick().sample(dut.o.payload).until(dut.o.valid)
            got.append(bool(verdict))
            ctx.set(dut.o.ready, 0)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run_until(20_000e-8)
    assert len(got) == len(requests), "the checker stopped answering"
    return got


def test_good_and_bad_requests():
    # interleaved, so that a bad request must not spoil the next good one
    cases = [(name, words, True) for name, words in GOOD.items()] + [(name, words, False) for name, words in BAD.items()]
    cases = [case for pair in zip(cases, cases[len(GOOD):] + cases[:len(GOOD)]) for case in pair]
    got = verdicts([words for _, words, _ in cases])
    assert [name for (name, _, ok), verdict in zip(cases, got) if verdict != ok] == []


def test_without_checks_every_request_may_run():
    """``check_requests=False`` (an option for builds short of logic): the checker only waits for each request's last word."""
    from dataclasses import replace

    requests = list(GOOD.values()) + list(BAD.values())
    assert verdicts(requests, replace(CONFIG, check_requests=False)) == [True] * len(requests)


def test_bad_config():
    with pytest.raises(TypeError, match="config must be an AccelConfig"):
        RequestChecker(None)


def test_runs_are_checked_against_the_descriptors_of_earlier_requests():
    """The shadow of the bases follows accepted requests only: a refused one changes nothing."""
    requests = [
        [0, *load_prog(0, (16, 0), (0, 0))],
        [0, *run(rows=2, words=8, passes=2)],           # x rows 16..31
        [0, *run(rows=3, words=8, passes=2)],           # x rows 16..39: refused
        [0, *run(rows=3, words=8, passes=0)],           # no descriptor read
        [0, *load_prog(0, (0, 0)), 0x77],               # refused: descriptor 0 stays at x_base 16
        [0, *run(rows=3, words=8, passes=1)],           # so still refused
        [0, *ZERO_BASES],
        [0, *run(rows=3, words=8, passes=1)],
    ]
    assert verdicts(requests) == [True, True, False, True, False, False, True, True]


def reference_verdicts(config, requests):
    """A plain-Python model of the checker: the verdict on each request, in order."""
    commands = counted_commands(config)
    x_bits, y_bits = config.addr_bits(config.x_depth), config.addr_bits(config.y_depth)
    prog_mask = (1 << config.addr_bits(config.prog_depth)) - 1
    bases = [(0, 0)] * (prog_mask + 1)  # as the program buffer holds them
    acc_lo, acc_hi = -(1 << (config.acc_bits - 1)), (1 << (config.acc_bits - 1)) - 1
    got = []

    def verdict(request, shadow):
        answers, k = 0, 1
        while k < len(request):
            op, arg = request[k] & 0xFF, request[k] >> 8
            if op in [int(op) for op in commands]:
                if k + 1 >= len(request) or request[k + 1] >> 16:
                    return False
                count = request[k + 1]
                words_per, answers_per, depth = commands[Op(op)]
                data = request[k + 2:k + 2 + count * words_per]
                if arg + count > depth or len(data) < count * words_per:
                    return False
                if op == Op.LOAD_PROG:
                    for d in range(count):
                        shadow[(arg + d) & prog_mask] = (data[3 * d] % (1 << x_bits), data[3 * d + 1] % (1 << y_bits))
                answers += count * answers_per
                k += 2 + count * words_per
            elif op == Op.RUN:
                if k + 3 >= len(request):
                    return False
                rows, blocks = request[k + 1] & 0xFFFF, request[k + 1] >> 16
                words, passes = request[k + 2] & 0xFFFF, request[k + 2] >> 16
                offset = request[k + 3] - (1 << 32) * (request[k + 3] >> 31)
                r, x, y = config.result_depth, config.x_depth, config.y_depth
                if not (rows <= r and blocks <= r and words <= config.max_words and passes <= config.prog_depth
                        and (blocks <= config.thresh_depth or not arg & 1) and acc_lo <= offset <= acc_hi
                        and rows * blocks <= r):
                    return False
                if any(xb + rows * words > x or yb + blocks * words > y for xb, yb in shadow[:passes]):
                    return False
                k += 4
            elif op == Op.READ_CYCLES:
                answers, k = answers + 2, k + 1
            elif op == Op.RESET:
                k += 1
            else:
                return False
        return request[0] <= MAX_ANSWERS and answers == request[0]

    for request in requests:
        shadow = list(bases)
        got.append(verdict(request, shadow))
        if got[-1]:
            bases = shadow
    return got


def random_request(rng, config):
    """A request of a few random commands near the bounds, sometimes cut short or mis-counted."""
    bound = lambda limit: int(rng.choice([0, 1, limit // 2, limit - 1, limit, limit + 1, int(rng.integers(0, limit + 2))]))
    words, answers = [], 0
    for _ in range(int(rng.integers(1, 4))):
        ops = [*LOAD_OPS, Op.READ, Op.RUN, Op.RUN, Op.RUN, Op.READ_CYCLES]
        op = ops[int(rng.integers(len(ops)))]
        if op == Op.RUN:
            rows, blocks = bound(8), bound(8)
            words += [header(Op.RUN, int(rng.integers(0, 2))), rows | blocks << 16,
                      bound(config.max_words) | bound(4) << 16, int(rng.choice([0, 1 << 31, 5]))]
        elif op == Op.READ_CYCLES:
            words, answers = words + [header(op)], answers + 2
        else:
            words_per, answers_per, depth = counted_commands(config)[op]
            first, count = bound(depth), bound(3)
            data = [bound(config.x_depth) if op == Op.LOAD_PROG else int(rng.integers(0, 256))
                    for _ in range(count * words_per)]
            words, answers = words + [header(op, first), count, *data], answers + count * answers_per
    if rng.random() < 0.1:
        words = words[:int(rng.integers(0, len(words)))]
    return [answers + int(rng.random() < 0.05)] + words


def test_random_requests_against_the_reference():
    """Differential: random requests (mostly near the bounds) get the reference's verdicts, state included."""
    rng = np.random.default_rng(17)
    config = AccelConfig(word_bits=8, lanes=2, x_depth=16, y_depth=8, thresh_depth=4, prog_depth=4, result_depth=16)
    requests = [random_request(rng, config) for _ in range(300)]
    expected = reference_verdicts(config, requests)
    assert 60 < sum(expected) < 240  # both kinds, and the descriptors' state matters
    assert verdicts(requests, config) == expected
