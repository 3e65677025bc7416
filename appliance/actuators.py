"""Decisions -> pins: a door relay, a buzzer and status LEDs, as gpiozero devices.

Wiring (BCM numbers are the defaults in the config):

    relay board IN -> GPIO17     buzzer (+) -> GPIO27     green LED -> GPIO22     red LED -> GPIO23

Example::

    door = DoorController(GpioConfig(), mode="lock-on-unmasked")
    door.apply("deny")      # relay locks, red LED on, buzzer beeps
    door.fail()             # the configured fail state: door released (safe) or locked (secure)
"""

from __future__ import annotations

import logging
import time

from gpiozero import LED, RGBLED, Buzzer, OutputDevice

from appliance.config import GpioConfig
from appliance.policy import ALLOW, DENY, IDLE

log = logging.getLogger(__name__)

LOCKED, RELEASED = "locked", "released"


def door_state(mode: str, decision: str) -> str:
    """What the door does for a decision. lock-on-unmasked: only a denial locks (or alarms);
    unlock-on-masked: only an allow releases."""
    if mode == "lock-on-unmasked":
        return LOCKED if decision == DENY else RELEASED
    return RELEASED if decision == ALLOW else LOCKED


class DoorController:
    """The relay, buzzer and LEDs as one device. Its door is in the fail state from the moment it is built."""

    def __init__(self, cfg: GpioConfig, mode: str):
        self.cfg, self.mode = cfg, mode
        self.fail_state = RELEASED if cfg.fail == "safe" else LOCKED
        self.door = self.fail_state
        self.relay = None
        if cfg.relay_pin is not None:
            self.relay = OutputDevice(cfg.relay_pin, active_high=cfg.relay_active_high,
                                      initial_value=self._energized(self.fail_state))
        self.buzzer = Buzzer(cfg.buzzer_pin, active_high=cfg.buzzer_active_high) if cfg.buzzer_pin is not None \
            else None
        self.rgb = RGBLED(*cfg.rgb_pins, pwm=False) if cfg.rgb_pins else None
        self.green = LED(cfg.green_pin) if cfg.green_pin is not None and not self.rgb else None
        self.red = LED(cfg.red_pin) if cfg.red_pin is not None and not self.rgb else None
        self.decision = IDLE
        self._last_alarm = float("-inf")
        self.closed = False

    def _energized(self, door: str) -> bool:
        return door == self.cfg.relay_energized

    def _set_door(self, door: str) -> None:
        self.door = door
        if self.relay is not None:
            self.relay.value = self._energized(door)

    def _set_leds(self, decision: str) -> None:
        if self.rgb is not None:
            self.rgb.color = {ALLOW: (0, 1, 0), DENY: (1, 0, 0)}.get(decision, (0, 0, 0))
        if self.green is not None:
            self.green.value = decision == ALLOW
        if self.red is not None:
            self.red.value = decision == DENY

    def apply(self, decision: str, now: float | None = None) -> None:
        """Drive the pins for a decision; only a change of decision touches them."""
        if decision == self.decision and self.door == door_state(self.mode, decision):
            return
        now = time.monotonic() if now is None else now
        entering_deny = decision == DENY and self.decision != DENY
        self.decision = decision
        self._set_door(door_state(self.mode, decision))
        self._set_leds(decision)
        if self.buzzer is None:
            return
        if entering_deny and now - self._last_alarm >= self.cfg.buzzer_cooldown:
            self._last_alarm = now
            self.buzzer.beep(self.cfg.buzzer_on, self.cfg.buzzer_off, n=self.cfg.buzzer_beeps or None)
        elif decision != DENY:
            self.buzzer.off()

    @staticmethod
    def wiring(cfg: GpioConfig) -> tuple:
        """What the devices are built from: a change here needs new devices; anything else is changed in place."""
        return (cfg.relay_pin, cfg.relay_active_high, cfg.buzzer_pin, cfg.buzzer_active_high, cfg.green_pin,
                cfg.red_pin, cfg.rgb_pins)

    def reconfigure(self, cfg: GpioConfig, mode: str) -> bool:
        """Take a reloaded [gpio] and mode in place, pins untouched unless their meaning changed; False when the
        wiring changed and new devices are needed (see `carry_from`)."""
        if self.wiring(cfg) != self.wiring(self.cfg):
            return False
        was_failed = self.door == self.fail_state and self.decision == IDLE
        self.cfg, self.mode = cfg, mode
        self.fail_state = RELEASED if cfg.fail == "safe" else LOCKED
        # relay_energized may have changed what the same pin level means: drive the pin for the door it shows.
        self._set_door(self.fail_state if was_failed else self.door)
        return True

    def carry_from(self, old: DoorController) -> None:
        """New devices for a changed wiring keep the old ones' buzzer cool-down: a reload never beeps again."""
        self._last_alarm = old._last_alarm

    def fail(self) -> None:
        """The defined state for start, stop, crash, a lost camera and the watchdog: fail state, quiet, dark."""
        self.decision = IDLE
        self._set_door(self.fail_state)
        self._set_leds(IDLE)
        if self.buzzer is not None:
            self.buzzer.off()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.fail()
        for device in (self.buzzer, self.rgb, self.green, self.red):
            if device is not None:
                device.close()
        # Closing returns the pin to input and the board de-energizes the relay, which config validation makes
        # the fail state: the same state a crash, a watchdog kill or a power cut leaves behind.
        if self.relay is not None:
            self.relay.close()
