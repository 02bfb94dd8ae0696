# amaranth: UnusedElaboratable=no
import pytest

from hw.config import SMALL
from hw.engine import Engine, Sequencer


def _expected(rows, blocks, words, passes):
    out = []
    for a in range(rows):
        for b in range(blocks):
            for p in range(passes):
                for t in range(words):
                    out.append(dict(
                        pass_idx=p, t=t, x_off=a * words, y_off=b * words, blk=b,
                        first_word=int(t == 0), last_word=int(t == words - 1),
                        first_pass=int(p == 0), last_pass=int(p == passes - 1),
                        final=int((a, b, p, t) == (rows - 1, blocks - 1, passes - 1, words - 1)),
                    ))
    return out


@pytest.mark.parametrize("counts", [(2, 3, 2, 2), (1, 1, 1, 1), (3, 1, 4, 1), (2, 2, 0, 3)])
def test_sequencer_issues_the_loop_nest_without_bubbles(run_sim, counts):
    rows, blocks, words, passes = counts
    dut = Sequencer(SMALL)
    issued = []
    fields = list(_expected(1, 1, 1, 1)[0])

    async def bench(ctx):
        ctx.set(dut.args.rows, rows)
        ctx.set(dut.args.blocks, blocks)
        ctx.set(dut.args.words, words)
        ctx.set(dut.args.passes, passes)
        ctx.set(dut.nonempty, 0 not in counts)
        ctx.set(dut.start, 1)
        await ctx.tick()
        ctx.set(dut.start, 0)
        for _ in range(rows * blocks * words * passes + 3):
            _, _, v, item = await ctx.tick().sample(dut.o.valid, dut.o.payload)
            issued.append({f: getattr(item, f) for f in fields} if v else None)

    run_sim(dut, bench)
    expect = _expected(rows, blocks, words, passes)
    assert issued == expect + [None] * 3


def test_engine_rejects_non_config():
    with pytest.raises(TypeError, match="config"):
        Engine({"lanes": 2})


def test_engine_latency_counts_every_stage():
    # start, descriptor read and register, address add, operand read and
    # two registers, lanes (3 for 8-bit words), words, passes, threshold
    assert Engine(SMALL).latency == 7 + 3 + 1 + 7 + 3
