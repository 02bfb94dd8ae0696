"""PLL settings for a requested clock: the lowest reachable frequency at or above it.

Both solvers search the dividers exhaustively (a few thousand candidates)
within the devices' documented ranges, and return the instance parameters
with the frequency they give, so that the build reports the real clock.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PLLSetting:
    """``params`` for the PLL instance (without ``p_``) and the output frequency in Hz."""

    params: dict[str, int | str]
    freq_hz: float


def _best(candidates: list[PLLSetting], f_in: float, f_out: float, device: str) -> PLLSetting:
    reachable = [c for c in candidates if c.freq_hz >= f_out]
    if not reachable:
        raise ValueError(f"the {device} PLL cannot make {f_out / 1e6:g} MHz from {f_in / 1e6:g} MHz")
    return min(reachable, key=lambda c: c.freq_hz)


def ice40_pll(f_in: float, f_out: float) -> PLLSetting:
    """SB_PLL40_PAD/CORE, simple feedback (iCE40 sysCLOCK PLL guide, icepll).

    ``f_pfd = f_in / (DIVR + 1)`` in 10..133 MHz, ``f_vco = f_pfd * (DIVF + 1)``
    in 533..1066 MHz, ``f_out = f_vco / 2**DIVQ``; the loop filter range
    follows ``f_pfd`` as icepll chooses it.
    """
    candidates = []
    for divr in range(16):
        f_pfd = f_in / (divr + 1)
        if not 10e6 <= f_pfd <= 133e6:
            continue
        filter_range = 1 + sum(f_pfd >= t for t in (17e6, 26e6, 44e6, 66e6, 101e6))
        for divf in range(128):
            f_vco = f_pfd * (divf + 1)
            if not 533e6 <= f_vco <= 1066e6:
                continue
            for divq in range(1, 7):
                candidates.append(PLLSetting(
                    {"FEEDBACK_PATH": "SIMPLE", "DIVR": divr, "DIVF": divf, "DIVQ": divq,
                     "FILTER_RANGE": filter_range},
                    f_vco / (1 << divq)))
    return _best(candidates, f_in, f_out, "iCE40")


def ecp5_pll(f_in: float, f_out: float) -> PLLSetting:
    """EHXPLLL with CLKOP fed back (ECP5 sysCLOCK guide, ecppll).

    ``f_pfd = f_in / CLKI_DIV`` in 3.125..400 MHz, ``f_out = f_pfd * CLKFB_DIV``,
    ``f_vco = f_out * CLKOP_DIV`` in 400..800 MHz.
    """
    candidates = []
    for clki_div in range(1, 129):
        f_pfd = f_in / clki_div
        if not 3.125e6 <= f_pfd <= 400e6:
            continue
        for clkfb_div in range(1, 81):
            out = f_pfd * clkfb_div
            if not 3.125e6 <= out <= 400e6:
                continue
            for clkop_div in range(1, 129):
                if 400e6 <= out * clkop_div <= 800e6:
                    candidates.append(PLLSetting(
                        {"CLKI_DIV": clki_div, "CLKFB_DIV": clkfb_div, "CLKOP_DIV": clkop_div,
                         "CLKOP_CPHASE": clkop_div - 1, "CLKOP_FPHASE": 0},
                        out))
                    break  # any VCO in range will do; keep the first divider
    return _best(candidates, f_in, f_out, "ECP5")
