"""deploy/monitoring/: the example Prometheus config and alert rules, checked and unit-tested by Debian's promtool
(package `prometheus`, installed by scripts/test), and kept in step with the metrics the appliance serves."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from support.data import REPO

from appliance.reporting.metrics import Metrics

MONITORING = REPO / "deploy" / "monitoring"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool (Debian's prometheus) is not installed "
                                    "(scripts/test installs it)")


def promtool(*args: str, cwd: Path = MONITORING) -> subprocess.CompletedProcess:
    return subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=60)


@needs_promtool
def test_config_and_rules_are_valid():
    r = promtool("check", "config", "prometheus.yml")
    assert r.returncode == 0, r.stdout + r.stderr
    r = promtool("check", "rules", "alerts.yml")
    assert r.returncode == 0 and "SUCCESS: 4 rules found" in r.stdout, r.stdout + r.stderr


@needs_promtool
def test_alerts_fire_when_they_should_and_not_before():
    r = promtool("test", "rules", "alerts.test.yml")
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr


@needs_promtool
@pytest.mark.parametrize("change", [("< 5", "< 3"), ("for: 2m", "for: 5m"), ("== 0\n        for: 1m", "== 2\n"
                                                                                                 "        for: 1m")])
def test_the_unit_tests_catch_a_wrong_rule(tmp_path, change):
    """A rule with another threshold or delay fails alerts.test.yml: the unit tests pin each number."""
    rules = (MONITORING / "alerts.yml").read_text()
    assert change[0] in rules
    (tmp_path / "alerts.yml").write_text(rules.replace(change[0], change[1], 1))
    shutil.copy(MONITORING / "alerts.test.yml", tmp_path)
    r = promtool("test", "rules", "alerts.test.yml", cwd=tmp_path)
    assert r.returncode != 0 and "FAILED" in r.stdout + r.stderr


def test_rules_only_name_metrics_the_appliance_serves():
    served = {m.name for m in Metrics().registry.collect()} | {s.name for m in Metrics().registry.collect()
                                                              for s in m.samples}
    used = set(re.findall(r"\bmask_appliance_\w+", (MONITORING / "alerts.yml").read_text()))
    assert used == {"mask_appliance_camera_up", "mask_appliance_fps", "mask_appliance_model_info"}
    assert used <= served, used - served
    # The example scrape config scrapes the job the rules select.
    assert 'job_name: mask-appliance' in (MONITORING / "prometheus.yml").read_text()
    assert (MONITORING / "alerts.yml").read_text().count('job="mask-appliance"') == 4


def test_the_unexpected_model_alert_expects_the_shipped_model():
    """The alert names the model this release rolls out: the shipped one, by its card's sha256 (it once named the
    previous model, and would have fired on every door that ran the shipped one)."""
    import json

    card = json.loads((REPO / "models" / "mask_classifier.json").read_text())
    rule = (MONITORING / "alerts.yml").read_text()
    assert re.findall(r'sha256!="([0-9a-f]{64})"', rule) == [card["sha256"]]
    assert f'sha256="{card["sha256"]}"' in (MONITORING / "alerts.test.yml").read_text()  # the door that raises none
