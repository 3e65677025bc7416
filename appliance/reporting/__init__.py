"""Reporting: the event log and everything that follows it off the frame path (MQTT, /metrics, the status
page, hard-example collection, sd_notify, status.json)."""
