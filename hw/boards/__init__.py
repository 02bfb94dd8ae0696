"""Board tops and what the build needs to know about each board."""

from __future__ import annotations

from dataclasses import dataclass

from hw.boards.common import BoardTop
from hw.boards.icebreaker import ICEBreakerTop
from hw.boards.ulx3s import ULX3STop


@dataclass(frozen=True)
class Board:
    """A supported board.

    ``config`` is the preset built when none is given, ``freq_hz`` the clock
    requested from the PLL, ``bitstream`` the file name the toolchain
    writes, ``programmers`` the commands that load it (the first one found
    on PATH is used) and ``install`` what to install when none is.
    """

    name: str
    top: type[BoardTop]
    family: str
    config: str
    freq_hz: float
    bitstream: str
    programmers: tuple[tuple[str, ...], ...]
    install: str


BOARDS = {
    "icebreaker": Board(
        "icebreaker", ICEBreakerTop, "ice40", "up5k", 36e6, "top.bin",
        (("iceprog", "{bitstream}"), ("openFPGALoader", "-b", "ice40_generic", "{bitstream}")),
        "iceprog (Debian/Ubuntu: apt-get install fpga-icestorm) or openFPGALoader "
        "(apt-get install openfpgaloader)",
    ),
    "ulx3s": Board(
        "ulx3s", ULX3STop, "ecp5", "ecp5", 100e6, "top.bit",
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
