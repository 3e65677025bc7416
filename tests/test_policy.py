"""The decision policy: tracks, votes, hysteresis and hold times."""

from __future__ import annotations

from appliance.config import PolicyConfig
from appliance.policy import ALLOW, DENY, IDLE, Policy, Verdict

A = (100.0, 100.0, 200.0, 220.0)  # one person
B = (400.0, 100.0, 500.0, 220.0)  # another, far from A
FPS = 15.0


def v(box, flagged: bool) -> Verdict:
    return Verdict(box, 0.9 if flagged else 0.1, flagged)


def feed(policy: Policy, frames: list[list[Verdict]], start: float = 0.0) -> list[str]:
    return [policy.update(f, start + i / FPS).state for i, f in enumerate(frames)]


def test_an_unmasked_face_denies_only_after_three_of_five_votes():
    states = feed(Policy(PolicyConfig()), [[v(A, True)]] * 4)
    assert states == [IDLE, IDLE, DENY, DENY]


def test_a_single_frame_flip_does_not_change_the_decision():
    policy = Policy(PolicyConfig(deny_hold=0, allow_hold=0))
    frames = [[v(A, False)]] * 4 + [[v(A, True)]] + [[v(A, False)]] * 4
    states = feed(policy, frames)
    assert states[:2] == [IDLE, IDLE]
    assert states[2:] == [ALLOW] * 7  # the flip at frame 4 never shows


def test_changing_back_needs_a_new_majority_hysteresis():
    policy = Policy(PolicyConfig(deny_hold=0, allow_hold=0))
    states = feed(policy, [[v(A, True)]] * 5 + [[v(A, False)]] * 4)
    # After five unmasked votes, two masked ones are not enough; the third settles it.
    assert states[4:] == [DENY, DENY, DENY, ALLOW, ALLOW]


def test_one_unmasked_face_wins_over_masked_ones():
    states = feed(Policy(PolicyConfig()), [[v(A, False), v(B, True)]] * 4)
    assert states[-1] == DENY


def test_deny_holds_after_the_face_leaves_then_goes_idle():
    cfg = PolicyConfig(deny_hold=2.0, track_timeout=0.5)
    policy = Policy(cfg)
    feed(policy, [[v(A, True)]] * 3)
    assert policy.update([], 1.0).state == DENY  # gone, within the hold
    assert policy.update([], 3.0).state == IDLE  # last unmasked at 2/15 s, hold 2 s: over


def test_allow_needs_every_present_face_masked():
    policy = Policy(PolicyConfig(allow_hold=0))
    feed(policy, [[v(A, False)]] * 3)
    assert policy.state == ALLOW
    # A second person arrives, not yet settled: allow stays only through allow_hold (0 here), so it ends.
    assert policy.update([v(A, False), v(B, False)], 1.0).state == IDLE


def test_tracks_follow_a_moving_face_and_expire():
    policy = Policy(PolicyConfig(track_timeout=0.5))
    for i in range(3):
        shifted = (A[0] + 10 * i, A[1], A[2] + 10 * i, A[3])
        policy.update([v(shifted, True)], i / FPS)
    assert len(policy.tracks) == 1 and policy.tracks[0].state == "unmasked"
    policy.update([], 2.0)
    assert policy.tracks == []


def test_decision_reports_changes_once():
    policy = Policy(PolicyConfig())
    changed = [policy.update([v(A, True)], i / FPS).changed for i in range(5)]
    assert changed == [False, False, True, False, False]


def test_a_face_after_the_timeout_starts_a_new_track():
    policy = Policy(PolicyConfig(track_timeout=1.0, deny_hold=0, allow_hold=0))
    feed(policy, [[v(A, True)]] * 5)
    assert policy.state == DENY
    # The same place, much later: a new person, who must earn their own votes.
    assert feed(policy, [[v(A, False)]] * 3, start=60.0) == [IDLE, IDLE, ALLOW]
