"""Relay, buzzer and LEDs on gpiozero's MockFactory pins: the real pin states, over time."""

from __future__ import annotations

import time

import pytest
from gpiozero import Device

from appliance.actuators import LOCKED, RELEASED, DoorController
from appliance.config import GpioConfig
from appliance.policy import ALLOW, DENY, IDLE


def pin(n: int):
    return Device.pin_factory.pin(n)


@pytest.fixture
def make_door():
    """Builds doors and closes them after the test, so no beep thread outlives its device."""
    doors = []

    def make(cfg: GpioConfig, mode: str = "lock-on-unmasked") -> DoorController:
        doors.append(DoorController(cfg, mode))
        return doors[-1]

    yield make
    for door in doors:
        door.close()


def test_fail_safe_door_is_released_from_the_start_and_locks_on_deny(make_door):
    door = make_door(GpioConfig())
    assert door.door == RELEASED and pin(17).state is False  # active-high relay, energized = locked
    door.apply(DENY)
    assert door.door == LOCKED and pin(17).state is True
    assert pin(23).state is True and pin(22).state is False  # red on, green off
    door.apply(ALLOW)
    assert pin(17).state is False and pin(22).state is True and pin(23).state is False
    door.close()
    assert door.door == RELEASED


def test_active_low_relay_is_driven_low_to_energize(make_door):
    door = make_door(GpioConfig(relay_active_high=False))
    assert pin(17).state is True  # de-energized
    door.apply(DENY)
    assert pin(17).state is False


def test_unlock_on_masked_releases_only_on_allow_and_fail_secure_starts_locked(make_door):
    cfg = GpioConfig(fail="secure", relay_energized="released")
    door = make_door(cfg, "unlock-on-masked")
    assert door.door == LOCKED and pin(17).state is False
    door.apply(ALLOW)
    assert door.door == RELEASED and pin(17).state is True
    door.apply(IDLE)
    assert door.door == LOCKED and pin(17).state is False
    door.apply(DENY)
    assert door.door == LOCKED and pin(17).state is False


def test_buzzer_beeps_on_deny_and_cools_down(make_door):
    cfg = GpioConfig(buzzer_on=0.02, buzzer_off=0.02, buzzer_beeps=2, buzzer_cooldown=10)
    door = make_door(cfg)
    buzzer = pin(27)
    buzzer.clear_states()
    door.apply(DENY, now=100.0)
    time.sleep(0.2)
    highs = [s for _, s in buzzer.states if s]
    assert len(highs) == 2  # two beeps, then quiet
    assert buzzer.state is False
    door.apply(IDLE, now=101.0)
    buzzer.clear_states()
    door.apply(DENY, now=102.0)  # within the cool-down: no new beeps
    time.sleep(0.1)
    assert not any(s for _, s in buzzer.states)
    door.apply(IDLE, now=110.0)
    door.apply(DENY, now=113.0)  # after it: beeps again
    time.sleep(0.2)
    assert any(s for _, s in buzzer.states)
    door.close()


def test_leaving_deny_silences_a_continuous_buzzer(make_door):
    door = make_door(GpioConfig(buzzer_beeps=0, buzzer_on=0.05, buzzer_off=0.05))
    door.apply(DENY, now=0.0)
    time.sleep(0.02)
    assert pin(27).state is True
    door.apply(ALLOW, now=1.0)
    time.sleep(0.1)
    assert pin(27).state is False


def test_rgb_led_replaces_the_two_leds(make_door):
    door = make_door(GpioConfig(rgb_pins=(5, 6, 13)))
    assert door.green is None and door.red is None
    door.apply(DENY)
    assert door.rgb.color == (1, 0, 0)
    door.apply(ALLOW)
    assert door.rgb.color == (0, 1, 0)


def test_fail_puts_the_door_in_its_fail_state_quiet_and_dark(make_door):
    door = make_door(GpioConfig(buzzer_beeps=0))
    door.apply(DENY, now=0.0)
    door.fail()
    assert pin(17).state is False and pin(27).state is False and pin(23).state is False


@pytest.mark.parametrize("mode", ["lock-on-unmasked", "unlock-on-masked"])
def test_no_pin_changes_while_the_decision_stays(mode, make_door):
    door = make_door(GpioConfig(), mode)
    door.apply(DENY, now=0.0)
    relay = pin(17)
    relay.clear_states()
    for i in range(10):
        door.apply(DENY, now=i / 15)
    assert len(relay.states) == 1  # clear_states leaves the current state only: no flicker
