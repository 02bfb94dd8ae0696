"""Board tops and what the build needs to know about each board."""

from __future__ import annotations

from dataclasses import dataclass

from hw.boards.common import BoardTop, CoreBoardTop
from hw.boards.icebreaker import ICEBreakerCoreTop, ICEBreakerTop
from hw.boards.ulx3s import ULX3SCoreTop, ULX3STop


@dataclass(frozen=True)
class Board:
    """A supported board.

    ``config`` is the preset built when none is given, ``freq_hz`` the clock
    requested from the PLL, ``bitstream`` the file name the toolchain
    writes, ``programmers`` the commands that load it (the first one found
    on PATH is used) and ``install`` what to install when none is.
    ``core_top`` is the whole-model design's top and ``divider`` its
    LayerNorm's (the reciprocal one where multipliers are to spare).
    """

    name: str
    top: type[BoardTop]
    core_top: type[CoreBoardTop]
    divider: str
    family: str
    config: str
    freq_hz: float
    bitstream: str
    programmers: tuple[tuple[str, ...], ...]
    install: str


BOARDS = {
    "icebreaker": Board(
        "icebreaker", ICEBreakerTop, ICEBreakerCoreTop, "serial", "ice40", "up5k", 36e6, "top.bin",
        (("iceprog", "{bitstream}"), ("openFPGALoader", "-b", "ice40_generic", "{bitstream}")),
        "iceprog (Debian/Ubuntu: apt-get install fpga-icestorm) or openFPGALoader "
        "(apt-get install openfpgaloader)",
    ),
    "ulx3s": Board(
        "ulx3s", ULX3STop, ULX3SCoreTop, "reciprocal", "ecp5", "ecp5", 100e6, "top.bit",
        (("openFPGALoader", "-b", "ulx3s", "{bitstream}"), ("fujprog", "{bitstream}")),
        "openFPGALoader (Debian/Ubuntu: apt-get install openfpgaloader) or fujprog",
    ),
}


def board(name: str) -> Board:
    """The board called ``name``; a ValueError lists the boards that exist."""
    if not isinstance(name, str):
        raise TypeError(f"board must be a str, got {type(name).__name__}")
    if name not in BOARDS:
        raise ValueError(f"BOARD must be one of {', '.join(sorted(BOARDS))}, got {name!r}")
    return BOARDS[name]
