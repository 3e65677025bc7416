"""The wiring diagrams, drawn from the config's defaults (appliance/config.py's GpioConfig) with schemdraw's SVG
backend: a changed default pin redraws the picture, so the picture cannot go wrong on its own.

Two diagrams, one per fail mode: `safe` (the default: power locks, the door is released when the service or the
power is gone) and `secure` (power releases, the door stays locked). `pins()` is what both draw; tests/test_docs.py
checks the labels in the SVG against the config's defaults.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import schemdraw
import schemdraw.elements as elm

from appliance.config import GpioConfig

schemdraw.use("svg")

# BCM GPIO number -> physical pin on the 40-pin header (the same on a Pi 4 and a Pi 5).
HEADER = {2: 3, 3: 5, 4: 7, 17: 11, 27: 13, 22: 15, 10: 19, 9: 21, 11: 23, 0: 27, 5: 29, 6: 31, 13: 33, 19: 35,
          26: 37, 14: 8, 15: 10, 18: 12, 23: 16, 24: 18, 25: 22, 8: 24, 7: 26, 1: 28, 12: 32, 16: 36, 20: 38, 21: 40}
FIVE_VOLT, GROUND = 2, 6  # the header pins the relay module takes its power from

# What each fail mode wants, and the lock it goes with (config.py refuses any other combination).
MODES: dict[str, dict[str, str]] = {
    "safe": {"relay_energized": "locked", "lock": "fail-safe lock: power LOCKS", "kind": "maglock, fail-safe strike",
             "cut": "a power cut or a dead service\nRELEASES the door"},
    "secure": {"relay_energized": "released", "lock": "fail-secure strike: power RELEASES",
               "kind": "fail-secure strike, motor lock", "cut": "a power cut or a dead service\nkeeps the door LOCKED"},
}
ROLES = ("relay_pin", "buzzer_pin", "green_pin", "red_pin")


def defaults() -> GpioConfig:
    """The [gpio] section as the config builds it when the file says nothing."""
    return GpioConfig()


def pins(gpio: GpioConfig | None = None) -> dict[str, int]:
    """The BCM pin of each device the diagrams draw: {"relay_pin": 17, ...} (a pin left unset is not drawn)."""
    g = gpio or defaults()
    return {role: getattr(g, role) for role in ROLES if getattr(g, role) is not None}


def config_lines(mode: str, gpio: GpioConfig | None = None) -> list[str]:
    """The [gpio] lines that go with a fail mode, as TOML, the other keys at their defaults."""
    g = gpio or defaults()
    fail = mode
    energized = MODES[mode]["relay_energized"]
    active = "true" if g.relay_active_high else "false"
    return ["[gpio]", f'fail = "{fail}"', f'relay_energized = "{energized}"', f"relay_active_high = {active}"]


def gpio_name(bcm: int) -> str:
    return f"GPIO{bcm} (pin {HEADER[bcm]})"


def draw(mode: str, gpio: GpioConfig | None = None) -> str:
    """The wiring diagram for fail mode `mode` ("safe" or "secure") as SVG text."""
    if mode not in MODES:
        raise ValueError(f"no fail mode {mode!r} (safe or secure)")
    g = gpio or defaults()
    roles = pins(g)
    s = 1.5  # pin spacing, header and relay module alike, so that their wires run straight
    header_pins: list[Any] = []
    if "relay_pin" in roles:
        header_pins += [elm.IcPin(name=gpio_name(roles["relay_pin"]), side="R", anchorname="relay"),
                        elm.IcPin(name=f"5V (pin {FIVE_VOLT})", side="R", anchorname="v5"),
                        elm.IcPin(name=f"GND (pin {GROUND})", side="R", anchorname="gnd")]
    for role, anchor in (("buzzer_pin", "buzzer"), ("green_pin", "green"), ("red_pin", "red")):
        if role in roles:
            header_pins.append(elm.IcPin(name=gpio_name(roles[role]), side="R", anchorname=anchor))
    header_pins.reverse()  # schemdraw counts right-side pins from the bottom
    with schemdraw.Drawing(show=False, fontsize=13) as d:
        d.config(unit=2.5, bgcolor="white")  # white, so that the lines show on a dark page too
        pi = elm.Ic(pins=header_pins, pinspacing=s, edgepadW=0.6, edgepadH=0.6, leadlen=0.6, lsize=13,
                    size=(4.2, s * (len(header_pins) + 1))).label("Raspberry Pi 4 / 5\n40-pin header\n(BCM numbers)",
                                                               "top", fontsize=13)
        d += pi
        run = 6.5  # how far right the devices start
        if "relay_pin" in roles:
            wire = elm.Line().at(pi.relay).right(run).label(f"relay_pin = {roles['relay_pin']}", "top", fontsize=12)
            d += wire
            d += elm.Line().at(pi.v5).right(run)
            d += elm.Line().at(pi.gnd).right(run)
            relay = elm.Ic(pins=[elm.IcPin(name="GND", side="L", anchorname="gnd"),
                                 elm.IcPin(name="VCC", side="L", anchorname="vcc"),
                                 elm.IcPin(name="IN", side="L", anchorname="inp"),
                                 elm.IcPin(name="NC (unused)", side="R", anchorname="nc"),
                                 elm.IcPin(name="NO", side="R", anchorname="no"),
                                 elm.IcPin(name="COM", side="R", anchorname="com")],
                           pinspacing=s, edgepadW=0.6, edgepadH=0.6, leadlen=0.6, size=(5.2, s * 3.2)).anchor("inp")
            d += relay.at(wire.end).label(
                "relay module\n" + ("high" if g.relay_active_high else "low") + " = energized", "bottom", fontsize=12)
            # The lock's loop: COM -> supply -> lock -> NO.
            d += elm.Line().at(relay.com).right(0.75)
            d += elm.Line().up(2.2)
            d += elm.Line().right(0.5)
            d += elm.BatteryCell().right(2.5).label("lock supply\n12 V DC", "top", fontsize=12)
            d += elm.Line().right(0.75)
            lock = elm.RBox(w=2.2, h=1.1).down(3.2)
            d += lock
            d += elm.Label().at((lock.center[0] + 0.9, lock.center[1])).label(
                MODES[mode]["lock"] + "\n(" + MODES[mode]["kind"] + ")", fontsize=12, halign="left")
            d += elm.Line().down(0.5)
            d.push()
            d += elm.Line().tox(relay.no)
            d.pop()
            far = (lock.center[0] + 7.0, lock.center[1])
            d += elm.Label().at((relay.no[0] + 1.6, relay.no[1] - 2.4)).label(
                "\n".join(config_lines(mode, g)), fontsize=12, halign="left")
            d += elm.Label().at((relay.no[0] + 1.6, relay.no[1] - 4.4)).label(MODES[mode]["cut"], fontsize=12,
                                                                               halign="left")
        for role, anchor, part in (("buzzer_pin", "buzzer", "buzzer"), ("green_pin", "green", "green"),
                                   ("red_pin", "red", "red")):
            if role not in roles:
                continue
            d += elm.Line().at(getattr(pi, anchor)).right(2.5).label(f"{role} = {roles[role]}", "top", fontsize=12)
            if part == "buzzer":
                d += elm.RBox(w=1.6, h=0.7).right(2.5).label("active buzzer\n(+ to the pin)", "bottom", fontsize=12)
                d += elm.Line().right(0.8)
            else:
                d += elm.Resistor().right(2.5).label("330 Ω", "bottom", fontsize=12)
                d += elm.LED().right(1.5).label(f"{part} LED", "bottom", fontsize=12)
            d += elm.Line().right(1.0)
            d += elm.Ground().right()
        if "relay_pin" in roles:
            # schemdraw sizes the picture by its lines, not by its texts: a white stroke makes room for the text
            d += elm.Line().at(far).to((far[0] + 0.1, far[1])).color("white")
        svg = d.get_imagedata("svg")
    return svg.decode() if isinstance(svg, bytes) else str(svg)


def labels(svg: str) -> list[str]:
    """Every text in an SVG drawing (a tspan each line), for the tests."""
    import re
    from html import unescape

    return [unescape(t) for t in re.findall(r"<tspan[^>]*>([^<]*)</tspan>", svg)]


def drawn_pins(svg: str) -> dict[str, int]:
    """{"relay_pin": 17, ...} as the SVG labels them."""
    import re

    found = {}
    for text in labels(svg):
        if m := re.fullmatch(r"(\w+_pin) = (\d+)", text.strip()):
            found[m.group(1)] = int(m.group(2))
    return found


def field_names() -> set[str]:
    return {f.name for f in dataclasses.fields(GpioConfig)}
