"""Relay, LEDs and buzzer on gpiozero's MockFactory pins: the real pin states, over time, as `MockPin` records them."""

from __future__ import annotations

import time

import pytest
from gpiozero import LED, Device, GPIOPinInUse, OutputDevice
from gpiozero.pins.mock import MockFactory

from appliance.config import GpioConfig
from appliance.deciding.actuators import DoorController, door_state
from appliance.vocab import Decision, Door, Mode

RELAY, BUZZER, GREEN, RED = 17, 27, 22, 23  # GpioConfig's defaults


def pin(n: int):
    return Device.pin_factory.pin(n)


def assert_states(n: int, expected: list[bool]) -> None:
    """`MockPin.assert_states`, which compares only as many states as both lists have, plus their number."""
    assert len(pin(n).states) == len(expected), pin(n).states
    pin(n).assert_states(expected)


def assert_states_and_times(n: int, expected: list[tuple[float, bool]]) -> None:
    """`MockPin.assert_states_and_times` (each state's time since the previous one, within 0.05 s), plus their
    number."""
    assert len(pin(n).states) == len(expected), pin(n).states
    pin(n).assert_states_and_times(expected)


def assert_free(*pins: int) -> None:
    """Each pin is let go: back to input, and another device can claim it."""
    for n in pins:
        assert pin(n).function == "input"
        OutputDevice(n).close()


class RecordingFactory(MockFactory):
    """MockFactory pins, with the order in which pins are claimed and let go."""

    def __init__(self):
        super().__init__()
        self.claimed: list = []
        self.released: list = []

    def reserve_pins(self, requester, *names):
        self.claimed.extend(names)
        return super().reserve_pins(requester, *names)

    def release_pins(self, reserver, *names):
        self.released.extend(int(name.removeprefix("GPIO")) for name in names)
        return super().release_pins(reserver, *names)


@pytest.fixture
def make_door():
    """Builds doors and closes them after the test, so no beep thread outlives its device."""
    doors = []

    def make(cfg: GpioConfig, mode: Mode = Mode.LOCK_ON_UNMASKED, **kwargs) -> DoorController:
        doors.append(DoorController(cfg, mode, **kwargs))
        return doors[-1]

    yield make
    for door in doors:
        door.close()


@pytest.mark.parametrize("mode, decision, door", [
    (Mode.LOCK_ON_UNMASKED, Decision.IDLE, Door.RELEASED), (Mode.LOCK_ON_UNMASKED, Decision.ALLOW, Door.RELEASED),
    (Mode.LOCK_ON_UNMASKED, Decision.DENY, Door.LOCKED), (Mode.UNLOCK_ON_MASKED, Decision.IDLE, Door.LOCKED),
    (Mode.UNLOCK_ON_MASKED, Decision.ALLOW, Door.RELEASED), (Mode.UNLOCK_ON_MASKED, Decision.DENY, Door.LOCKED),
])
def test_door_state_per_mode(mode, decision, door):
    assert door_state(mode, decision) is door
    assert door_state(str(mode), str(decision)) is door  # the config's and the policy's plain strings too


def test_fail_safe_door_is_released_from_the_start_and_locks_on_deny(make_door):
    door = make_door(GpioConfig())
    assert door.state is Door.RELEASED and door.decision is Decision.IDLE
    assert_states(RELAY, [False])  # active-high relay, energized = locked: never energized at start
    door.apply(Decision.DENY)
    assert door.state is Door.LOCKED
    assert_states(RELAY, [False, True])
    assert_states(RED, [False, True])
    assert_states(GREEN, [False])
    door.apply("allow")  # the policy's plain string is taken too
    assert door.decision is Decision.ALLOW and door.state is Door.RELEASED
    assert_states(RELAY, [False, True, False])
    assert_states(GREEN, [False, True])
    assert_states(RED, [False, True, False])
    door.close()
    assert door.state is Door.RELEASED and door.closed
    assert_states(GREEN, [False, True, False])  # dark before the pins were let go
    assert_free(RELAY, GREEN, RED, BUZZER)


def test_active_low_relay_is_driven_low_to_energize(make_door):
    door = make_door(GpioConfig(relay_active_high=False))
    door.apply(Decision.DENY)
    door.apply(Decision.IDLE)
    assert_states(RELAY, [False, True, False, True])  # driven high (de-energized) at claim, low while locked


def test_unlock_on_masked_releases_only_on_allow_and_fail_secure_starts_locked(make_door):
    door = make_door(GpioConfig(fail="secure", relay_energized="released"), Mode.UNLOCK_ON_MASKED)
    assert door.state is Door.LOCKED
    door.apply(Decision.ALLOW)
    assert door.state is Door.RELEASED
    door.apply(Decision.IDLE)
    assert door.state is Door.LOCKED
    door.apply(Decision.DENY)
    assert door.state is Door.LOCKED
    assert_states(RELAY, [False, True, False])  # energized (released) only for the allow


def test_buzzer_beeps_on_deny_and_cools_down(make_door):
    door = make_door(GpioConfig(buzzer_on=0.1, buzzer_off=0.1, buzzer_beeps=2, buzzer_cooldown=10))
    pin(BUZZER).clear_states()
    door.apply(Decision.DENY, now=100.0)
    time.sleep(0.5)
    assert_states_and_times(BUZZER, [(0, False), (0, True), (0.1, False), (0.1, True), (0.1, False)])
    door.apply(Decision.IDLE, now=101.0)
    pin(BUZZER).clear_states()
    door.apply(Decision.DENY, now=102.0)  # within the cool-down: no new beeps
    time.sleep(0.2)
    assert_states(BUZZER, [False])
    door.apply(Decision.IDLE, now=110.0)
    door.apply(Decision.DENY, now=113.0)  # after it: beeps again
    time.sleep(0.5)
    assert_states(BUZZER, [False, True, False, True, False])


def test_leaving_deny_silences_a_continuous_buzzer(make_door):
    door = make_door(GpioConfig(buzzer_beeps=0, buzzer_on=0.3, buzzer_off=0.3))
    pin(BUZZER).clear_states()
    door.apply(Decision.DENY, now=0.0)
    time.sleep(0.1)
    door.apply(Decision.ALLOW, now=1.0)
    time.sleep(0.3)
    assert_states_and_times(BUZZER, [(0, False), (0, True), (0.1, False)])  # cut at the allow, not at on-time


def test_rgb_led_replaces_the_two_leds(make_door):
    door = make_door(GpioConfig(rgb_pins=(5, 6, 13)))
    assert door.green is None and door.red is None
    door.apply(Decision.DENY)
    assert door.rgb.color == (1, 0, 0)
    door.apply(Decision.ALLOW)
    assert door.rgb.color == (0, 1, 0)
    assert_states(5, [False, True, False])
    assert_states(6, [False, True])
    assert_free(GREEN, RED)  # the LED pins are not claimed


def test_fail_puts_the_door_in_its_fail_state_quiet_and_dark(make_door):
    door = make_door(GpioConfig(buzzer_beeps=0))
    door.apply(Decision.DENY, now=0.0)
    door.fail()
    assert door.state is Door.RELEASED and door.decision is Decision.IDLE
    assert_states(RELAY, [False, True, False])
    assert_states(BUZZER, [False, True, False])
    assert_states(RED, [False, True, False])


@pytest.mark.parametrize("mode", list(Mode))
def test_no_pin_changes_while_the_decision_stays(mode, make_door):
    door = make_door(GpioConfig(), mode)
    door.apply(Decision.DENY, now=0.0)
    for n in (RELAY, RED, GREEN):
        pin(n).clear_states()
    for i in range(10):
        door.apply(Decision.DENY, now=i / 15)
    for n in (RELAY, RED, GREEN):
        assert_states(n, [pin(n).state])  # clear_states leaves the current state only: no flicker


def test_children_are_built_in_order_and_let_go_in_reverse_the_relay_last(monkeypatch):
    factory = RecordingFactory()
    monkeypatch.setattr(Device, "pin_factory", factory)
    door = DoorController(GpioConfig(), Mode.LOCK_ON_UNMASKED)
    assert door.value._fields == ("relay", "green", "red", "buzzer")
    assert list(door) == [door.relay, door.green, door.red, door.buzzer]
    assert factory.claimed == [RELAY, GREEN, RED, BUZZER]
    door.close()
    assert factory.released == [BUZZER, RED, GREEN, RELAY]
    rgb = DoorController(GpioConfig(rgb_pins=(5, 6, 13)), Mode.LOCK_ON_UNMASKED)
    assert rgb.value._fields == ("relay", "rgb", "buzzer")
    rgb.close()
    bare = GpioConfig(relay_pin=None, buzzer_pin=None, green_pin=None, red_pin=None)
    none = DoorController(bare, "lock-on-unmasked")
    assert len(none) == 0 and none.relay is None and not none.closed  # no pins: still a door with a state
    none.close()
    assert none.closed and none.state is Door.RELEASED


def test_the_pin_factory_argument_is_honoured(monkeypatch, make_door):
    default, given = RecordingFactory(), RecordingFactory()
    monkeypatch.setattr(Device, "pin_factory", default)
    door = make_door(GpioConfig(rgb_pins=(5, 6, 13)), pin_factory=given)
    assert door.pin_factory is given and all(child.pin_factory is given for child in door)
    assert given.claimed == [RELAY, 5, 6, 13, BUZZER] and default.claimed == []


def test_a_pin_in_use_fails_the_door_and_lets_go_of_the_pins_it_had_claimed():
    held = LED(BUZZER)  # the last child's pin, taken by another device
    with pytest.raises(GPIOPinInUse) as failed:
        DoorController(GpioConfig(), Mode.LOCK_ON_UNMASKED)
    assert failed.traceback  # the failed door is still referenced from here: only its close lets the pins go
    assert_states(RELAY, [False])  # the relay was claimed in the fail state and never energized
    assert_free(RELAY, GREEN, RED)
    held.close()
    DoorController(GpioConfig(), Mode.LOCK_ON_UNMASKED).close()  # and the next try gets every pin


def test_a_pin_in_use_inside_the_rgb_led_lets_go_of_the_relay_and_the_rgb_leds_other_pins():
    held = OutputDevice(13)  # the RGB LED's blue pin
    with pytest.raises(GPIOPinInUse):
        DoorController(GpioConfig(rgb_pins=(5, 6, 13)), Mode.LOCK_ON_UNMASKED)
    assert_free(RELAY, 5, 6)
    held.close()


def test_close_is_idempotent_and_a_closed_door_is_not_driven(make_door):
    door = make_door(GpioConfig())
    door.apply(Decision.DENY, now=0.0)
    door.close()
    door.close()
    assert_states(RELAY, [False, True, False])
    with pytest.raises(Exception, match="closed"):
        door.apply(Decision.ALLOW, now=1.0)  # gpiozero's DeviceClosed: a stale door never moves a reused pin


def test_reconfigure_keeps_the_pins_and_follows_a_new_fail_state(make_door):
    door = make_door(GpioConfig(buzzer_cooldown=10))
    door.apply(Decision.DENY, now=0.0)
    door.fail()  # idle in the fail state, as a reload finds a door with nobody in front
    secure = GpioConfig(fail="secure", relay_energized="released", buzzer_cooldown=30)
    assert door.reconfigure(secure, Mode.UNLOCK_ON_MASKED)
    assert door.state is Door.LOCKED and door.fail_state is Door.LOCKED and door.mode is Mode.UNLOCK_ON_MASKED
    assert door.cfg.buzzer_cooldown == 30
    assert_states(RELAY, [False, True, False])  # de-energized is the new fail state too: the pin stays low
    assert not door.reconfigure(GpioConfig(relay_pin=5), Mode.LOCK_ON_UNMASKED)  # new pins: new devices
    assert door.cfg is secure


def test_new_devices_carry_the_buzzer_cool_down(make_door):
    old = make_door(GpioConfig(buzzer_cooldown=10))
    old.apply(Decision.DENY, now=100.0)
    old.close()
    new = make_door(GpioConfig(buzzer_pin=5, buzzer_cooldown=10))
    new.carry_from(old)
    pin(5).clear_states()
    new.apply(Decision.DENY, now=105.0)  # the old door beeped 5 s ago: quiet
    time.sleep(0.1)
    assert_states(5, [False])


def test_a_rewire_to_a_pin_in_use_can_fall_back_to_the_old_wiring():
    """The reload path (keeper.rewire): the old door is closed, the new one fails on a held pin after claiming the
    relay's, and the old wiring must be claimable again at once."""
    old = DoorController(GpioConfig(), Mode.LOCK_ON_UNMASKED)
    old.close()
    held = LED(5)
    try:
        DoorController(GpioConfig(buzzer_pin=5), Mode.LOCK_ON_UNMASKED)  # relay and LEDs claimed, buzzer held
    except GPIOPinInUse:
        back = DoorController(old.cfg, old.mode)  # as rewire does: while the error (and the failed door) is alive
    else:
        pytest.fail("the held pin was claimed")
    back.carry_from(old)
    assert back.value._fields == ("relay", "green", "red", "buzzer") and back.state is Door.RELEASED
    back.close()
    held.close()
