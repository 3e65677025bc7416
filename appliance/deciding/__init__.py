"""Deciding and acting: the policy judges the visit, the door keeper drives the relay, buzzer and LEDs."""
