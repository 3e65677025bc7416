"""Decisions -> pins: a door relay, status LEDs (or one RGB LED) and a buzzer, as one gpiozero composite device.

Wiring (BCM numbers are the defaults in the config):

    relay board IN -> GPIO17     green LED -> GPIO22     red LED -> GPIO23     buzzer (+) -> GPIO27

Example::

    door = DoorController(GpioConfig(), Mode.LOCK_ON_UNMASKED)
    door.apply(Decision.DENY)   # relay locks, red LED on, buzzer beeps
    door.fail()                 # the configured fail state: door released (safe) or locked (secure)
    door.close()                # fail state, then the pins are let go, the relay last
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

from gpiozero import LED, RGBLED, Buzzer, CompositeDevice, Device, OutputDevice
from gpiozero.pins import Factory

from appliance.config import GpioConfig
from appliance.vocab import Decision, Door, Mode

# The children's names, in the order they are built; closing goes the other way, so the relay, which holds the
# door in its fail state from the instant its pin is claimed, is the last pin to be let go.
CHILDREN = ("relay", "green", "red", "rgb", "buzzer")
_COLORS = {Decision.ALLOW: (0, 1, 0), Decision.DENY: (1, 0, 0)}


def door_state(mode: Mode | str, decision: Decision | str) -> Door:
    """What the door does for a decision. lock-on-unmasked: only a denial locks (or alarms);
    unlock-on-masked: only an allow releases."""
    if mode == Mode.LOCK_ON_UNMASKED:
        return Door.LOCKED if decision == Decision.DENY else Door.RELEASED
    return Door.RELEASED if decision == Decision.ALLOW else Door.LOCKED


def fail_door(cfg: GpioConfig) -> Door:
    """`[gpio] fail` as a door state: safe = released, secure = locked."""
    return Door.RELEASED if cfg.fail == "safe" else Door.LOCKED


class DoorController(CompositeDevice):
    """The relay, the LEDs (or RGB LED) and the buzzer as one gpiozero composite device, as `TrafficLightsBuzzer`
    composes its children. Its door is in the fail state from the moment the relay's pin is claimed.

    Children are built in the order of `CHILDREN`, only those `[gpio]` wires (the RGB LED replaces the two LEDs),
    all on `pin_factory` (gpiozero's default when None). If one cannot be built (a pin in use, a missing pin
    driver), the ones already built are closed before the error propagates, so the pins are free again.

    It is a `CompositeDevice`, not a `CompositeOutputDevice`: `on()`, `off()` and a writable `value` would move the
    relay behind `state`, which the service reports as the door's. The door is driven by `apply` and `fail` only.
    """

    # Declared for type checkers only: at run time these are the named children (None where not wired), served
    # by __getattr__. Class attributes of these names would collide with gpiozero's reserved-name check.
    relay: OutputDevice | None
    green: LED | None
    red: LED | None
    rgb: RGBLED | None
    buzzer: Buzzer | None

    def __init__(self, cfg: GpioConfig, mode: Mode | str, *, pin_factory: Factory | None = None) -> None:
        self._closed = True  # until every child is built: a __del__ after a failed start must touch nothing
        self.cfg, self.mode = cfg, Mode(mode)
        self.fail_state = fail_door(cfg)
        self.state: Door = self.fail_state
        self.decision = Decision.IDLE
        self._last_alarm = float("-inf")
        with ExitStack() as claimed:
            children: dict[str, Device] = {}
            for name, make in self._builders(cfg, pin_factory):
                children[name] = make()
                claimed.callback(children[name].close)  # on a failure below: closed, newest first
            super().__init__(**children, _order=tuple(children), pin_factory=pin_factory)
            claimed.pop_all()
        self._closed = False

    def _builders(self, cfg: GpioConfig, pin_factory: Factory | None) -> list[tuple[str, Callable[[], Device]]]:
        """The children `cfg` wires, in `CHILDREN` order, each as a constructor not yet called."""
        builders: list[tuple[str, Callable[[], Device]]] = []
        if cfg.relay_pin is not None:
            initial = self._energized(self.fail_state)
            builders.append(("relay", lambda: OutputDevice(cfg.relay_pin, active_high=cfg.relay_active_high,
                                                           initial_value=initial, pin_factory=pin_factory)))
        rgb = cfg.rgb_pins
        if rgb:
            builders.append(("rgb", lambda: RGBLED(*rgb, pwm=False, pin_factory=pin_factory)))
        else:
            if cfg.green_pin is not None:
                builders.append(("green", lambda: LED(cfg.green_pin, pin_factory=pin_factory)))
            if cfg.red_pin is not None:
                builders.append(("red", lambda: LED(cfg.red_pin, pin_factory=pin_factory)))
        if cfg.buzzer_pin is not None:
            builders.append(("buzzer", lambda: Buzzer(cfg.buzzer_pin, active_high=cfg.buzzer_active_high,
                                                      pin_factory=pin_factory)))
        return builders

    def __getattr__(self, name: str) -> Any:
        """A child by name; None for one `[gpio]` does not wire."""
        if name in CHILDREN:
            return self._named.get(name)
        return super().__getattr__(name)

    @property
    def closed(self) -> bool:
        """True once `close` has run (or before the constructor finished)."""
        return getattr(self, "_closed", True)

    def _energized(self, door: Door) -> bool:
        return door == self.cfg.relay_energized

    def _set_door(self, door: Door) -> None:
        self.state = door
        if self.relay is not None:
            self.relay.value = self._energized(door)

    def _set_leds(self, decision: Decision) -> None:
        if self.rgb is not None:
            self.rgb.color = _COLORS.get(decision, (0, 0, 0))
        if self.green is not None:
            self.green.value = decision == Decision.ALLOW
        if self.red is not None:
            self.red.value = decision == Decision.DENY

    def apply(self, decision: Decision | str, now: float | None = None) -> None:
        """Drive the pins for a decision; only a change of decision (or of the door it means) touches them. A new
        denial beeps unless the last beeps were within `buzzer_cooldown` of `now` (the frames' clock)."""
        decision = Decision(decision)
        if decision == self.decision and self.state == door_state(self.mode, decision):
            return
        now = time.monotonic() if now is None else now
        entering_deny = decision == Decision.DENY and self.decision != Decision.DENY
        self.decision = decision
        self._set_door(door_state(self.mode, decision))
        self._set_leds(decision)
        if self.buzzer is None:
            return
        if entering_deny and now - self._last_alarm >= self.cfg.buzzer_cooldown:
            self._last_alarm = now
            self.buzzer.beep(self.cfg.buzzer_on, self.cfg.buzzer_off, n=self.cfg.buzzer_beeps or None)
        elif decision != Decision.DENY:
            self.buzzer.off()

    @staticmethod
    def wiring(cfg: GpioConfig) -> tuple:
        """What the devices are built from: a change here needs new devices; anything else is changed in place."""
        return (cfg.relay_pin, cfg.relay_active_high, cfg.buzzer_pin, cfg.buzzer_active_high, cfg.green_pin,
                cfg.red_pin, cfg.rgb_pins)

    def reconfigure(self, cfg: GpioConfig, mode: Mode | str) -> bool:
        """Take a reloaded [gpio] and mode in place, pins untouched unless their meaning changed; False when the
        wiring changed and new devices are needed (see `carry_from`)."""
        if self.wiring(cfg) != self.wiring(self.cfg):
            return False
        was_failed = self.state == self.fail_state and self.decision == Decision.IDLE
        self.cfg, self.mode = cfg, Mode(mode)
        self.fail_state = fail_door(cfg)
        # relay_energized may have changed what the same pin level means: drive the pin for the door it shows.
        self._set_door(self.fail_state if was_failed else self.state)
        return True

    def carry_from(self, old: DoorController) -> None:
        """New devices for a changed wiring keep the old ones' buzzer cool-down: a reload never beeps again."""
        self._last_alarm = old._last_alarm

    def fail(self) -> None:
        """The defined state for start, stop, crash, a lost camera and the watchdog: fail state, quiet, dark."""
        self.decision = Decision.IDLE
        self._set_door(self.fail_state)
        self._set_leds(Decision.IDLE)
        if self.buzzer is not None:
            self.buzzer.off()

    def close(self) -> None:
        """Fail state, then every pin let go, in the reverse of the build order (the relay last). Idempotent."""
        if self.closed:
            return
        self._closed = True
        try:
            self.fail()
        finally:
            # Closing returns the relay's pin to input and the board de-energizes the relay, which config
            # validation makes the fail state: the same state a crash, a watchdog kill or a power cut leaves.
            for device in reversed(tuple(self)):
                device.close()
            super().close()
