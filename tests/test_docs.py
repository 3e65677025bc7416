"""The manual (docs/, built by scripts/docs) against the code: the generated references list every config key,
command option, topic, entity, metric, route, fault and card key; the wiring diagrams draw the config's default
pins; the README's links lead to pages and anchors that exist; and no page names a path of a particular machine.
The build itself (`scripts/docs`: Sphinx with -W -n, which fails on a broken link or #anchor) runs in the test
command; these tests need no Sphinx."""

from __future__ import annotations

import re
import sys
from dataclasses import fields
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
sys.path.insert(0, str(DOCS / "_ext"))
pytest.importorskip("schemdraw", reason="the docs extra (scripts/venv test) draws the wiring")
pytest.importorskip("yaml", reason="the alert rules are read with PyYAML")

import refgen  # noqa: E402  (docs/_ext, put on the path above)
import wiring  # noqa: E402

from appliance import config as config_mod  # noqa: E402
from appliance import vocab  # noqa: E402
from appliance.config import GpioConfig  # noqa: E402


def hand_written_pages() -> list[Path]:
    """README.md and every Markdown page of docs/, not the generated ones."""
    return [REPO / "README.md", *(p for p in sorted(DOCS.rglob("*.md")) if "_generated" not in p.parts)]


def slug(heading: str) -> str:
    """A heading's anchor as GitHub and MyST (myst_heading_anchors) make it."""
    text = re.sub(r"[`*]", "", heading.strip()).lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """The #anchors of a page's headings, those of the files it includes (generated ones too) among them."""
    text = page.read_text()
    for included in re.findall(r"^```\{include\} (\S+)", text, re.M):
        path = (page.parent / included).resolve()
        if "_generated" in path.parts:
            text += "\n" + refgen.pages()[path.name]
        elif path.is_file():
            text += "\n" + path.read_text()
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6} (.+)$", text, re.M)}


# -- the wiring diagrams ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", sorted(wiring.MODES))
def test_the_wiring_diagram_draws_the_config_default_pins(mode):
    svg = wiring.draw(mode)
    defaults = GpioConfig()
    assert wiring.drawn_pins(svg) == {
        "relay_pin": defaults.relay_pin, "buzzer_pin": defaults.buzzer_pin, "green_pin": defaults.green_pin,
        "red_pin": defaults.red_pin}
    labels = wiring.labels(svg)
    for pin in (defaults.relay_pin, defaults.buzzer_pin, defaults.green_pin, defaults.red_pin):
        assert f"GPIO{pin} (pin {wiring.HEADER[pin]})" in labels  # the header pin beside the BCM number


def test_the_fail_safe_diagram_shows_the_default_fail_mode_and_the_other_one_the_only_other_valid_one():
    defaults = GpioConfig()
    safe, secure = wiring.labels(wiring.draw("safe")), wiring.labels(wiring.draw("secure"))
    assert f'fail = "{defaults.fail}"' in safe and f'relay_energized = "{defaults.relay_energized}"' in safe
    assert 'fail = "secure"' in secure and 'relay_energized = "released"' in secure
    # Both drawn combinations are the ones the config accepts (it refuses the other two).
    for mode in wiring.MODES:
        config_mod.parse({"gpio": {"fail": mode, "relay_energized": wiring.MODES[mode]["relay_energized"]}})


def test_a_changed_default_pin_changes_the_picture():
    svg = wiring.draw("safe", GpioConfig(relay_pin=5, red_pin=None))
    assert wiring.drawn_pins(svg) == {"relay_pin": 5, "buzzer_pin": 27, "green_pin": 22}
    assert "GPIO5 (pin 29)" in wiring.labels(svg)


def test_the_header_map_is_the_40_pin_header():
    assert set(wiring.HEADER) == set(range(28))  # BCM 0..27, as [gpio] bounds them
    assert len(set(wiring.HEADER.values())) == 28 and not {2, 4, 6, 9, 14, 20, 25, 30, 34, 39} & set(
        wiring.HEADER.values())  # no GPIO on a 5 V or ground pin


# -- the configuration reference ----------------------------------------------------------------------------------

def test_every_config_key_is_in_the_generated_reference_with_its_default():
    page = refgen.configuration()
    sections = dict(re.findall(r"^## \[(\w+)\]\n(.*?)(?=^## |\Z)", page, re.M | re.S))
    for name, cls in refgen.config_sections():
        assert name in sections, f"[{name}] missing"
        for f in fields(cls):
            row = re.search(rf"^\| `{f.name}` \|.*$", sections[name], re.M)
            assert row, f"[{name}] {f.name} missing"
            if f.default is not None and isinstance(f.default, bool | int | float | str):
                assert f"`{refgen._toml(f.default)}`" in row.group(0), f"[{name}] {f.name}: default"
    assert len(refgen.config_keys()) == sum(1 for _ in re.finditer(r"^\| `\w+` \|", page, re.M))


def test_the_reference_lists_what_mask_appliance_config_prints():
    printed = set()
    section = ""
    for line in config_mod.describe().splitlines():
        if m := re.fullmatch(r"\[(\w+)\]", line):
            section = m.group(1)
        elif m := re.match(r"(?:# )?(\w+) = ", line):
            printed.add((section, m.group(1)))
    assert printed == set(refgen.config_keys())


# -- the commands, the words, the outputs -------------------------------------------------------------------------

def test_every_option_of_every_command_is_in_the_cli_reference():
    page = refgen.cli()
    for prog, family in refgen.families().items():
        assert f"## {prog}\n" in page
        for option in refgen.options(family.parser):
            assert option in page
        for name, parser in refgen.subcommands(family).items():
            section = page.split(f"### {prog} {name}\n", 1)[1].split("\n### ", 1)[0]
            for option in refgen.options(parser):
                assert option in section, f"{prog} {name} {option}"


def test_every_fault_and_recovery_has_its_own_section_in_troubleshooting():
    headings = anchors(DOCS / "troubleshooting.md")
    for word in [*vocab.Fault, *vocab.Recovery]:
        assert slug(word.value) in headings, f"troubleshooting.md has no '### {word.value}'"
    events = refgen.events()
    for word in [*vocab.Kind, *vocab.Fault, *vocab.Recovery, *vocab.Decision, *vocab.Door]:
        assert f"`{word.value}`" in events


def test_every_exit_code_is_listed_and_explained():
    codes = dict(refgen.exit_codes())
    assert set(codes) == {0, 1, 2, 141}
    troubleshooting = (DOCS / "troubleshooting.md").read_text()
    exits = troubleshooting.split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    for code in codes:
        assert f"{code} " in exits


def test_every_topic_route_and_card_key_has_a_note():
    assert set(refgen.TOPIC_NOTES) == set(refgen.topic_names())
    assert set(refgen.ROUTE_NOTES) == set(refgen.route_paths())
    assert set(refgen.card()) <= set(refgen.CARD_NOTES)


def test_every_home_assistant_entity_is_in_the_reference_and_the_how_to():
    from appliance.reporting.mqtt_discovery import ENTITIES

    reference, howto = refgen.mqtt(), (DOCS / "howto/home-assistant.md").read_text()
    for _component, key, extra in ENTITIES:
        assert f"`{key}`" in reference and extra["name"] in reference
        assert extra["name"] in howto, f"howto/home-assistant.md does not name the entity {extra['name']}"


def test_every_metric_and_alert_is_in_the_reference_and_the_pages_name_no_other():
    page = refgen.metrics()
    names = refgen.metric_names()
    for name in names:
        assert f"`{name}`" in page
    for rule in refgen.alerts():
        assert f"`{rule['alert']}`" in page
    known = set(names) | {f["name"].removesuffix("_total") for f in refgen.metric_families()}
    for path in hand_written_pages():
        for name in re.findall(r"mask_appliance_[a-z_]+", path.read_text()):
            base = re.sub(r"_(sum|count|bucket)$", "", name)
            assert base in known, f"{path.relative_to(REPO)} names {name}, which the service does not serve"


# -- the pages ----------------------------------------------------------------------------------------------------

MACHINE_PATH = re.compile(r"(?<![\w.~$-])/(?:work|root|home|Users|mnt|srv/[a-z]+)/")


def test_no_page_names_a_path_of_a_particular_machine():
    pages = {str(p.relative_to(REPO)): p.read_text() for p in hand_written_pages()}
    pages.update({f"docs/_generated/{name}": text for name, text in refgen.pages().items()})
    for name, text in pages.items():
        found = MACHINE_PATH.search(text)
        assert not found, f"{name}: {text[max(0, found.start() - 40):found.end() + 40]!r}"
    assert MACHINE_PATH.search("see /home/pi/x") and MACHINE_PATH.search("(/work/main/x)")
    assert not MACHINE_PATH.search("~/.cache/x and /var/lib/mask-appliance and $HOME/x")


def test_no_page_has_a_raw_html_tag_outside_code():
    # MyST passes <hostname> through as HTML, and the browser hides it: placeholders belong in `code`.
    pages = {str(p.relative_to(REPO)): p.read_text() for p in hand_written_pages()}
    pages.update({f"docs/_generated/{name}": text for name, text in refgen.pages().items()})
    for name, text in pages.items():
        text = re.sub(r"```.*?```", "", text, flags=re.S)
        text = re.sub(r"``.*?``|`[^`\n]*`", "", text)
        text = re.sub(r"<!--.*?-->", "", text, flags=re.S)
        tag = re.search(r"<[A-Za-z/][^>\n]*>", text)
        assert not tag, f"{name}: {tag.group(0)} outside code"


def test_the_readme_is_the_front_door():
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= 170
    for line in ("./scripts/demo    # installs the runtime into .venv and runs the service on the scene photos, mock "
                 "pins, no camera",
                 "./scripts/test    # installs everything into .venv (TensorFlow included) and runs ruff and the "
                 "whole test suite"):
        assert line in text
    for words in ("3.11", "3.12", "3.13", "Raspberry Pi 4", "Raspberry Pi 5", "Bookworm", "Trixie", "scripts/docs",
                  "scripts/docs serve", "docs/results/status-page.png"):
        assert words in text, words
    # The three questions a new user comes with are answered one click from the README.
    for target in ("docs/howto/wiring.md#a-lock-that-must-open-on-a-power-cut",
                   "docs/howto/home-assistant.md#add-a-door", "docs/troubleshooting.md#camera-guard-failed"):
        assert f"]({target})" in text


@pytest.mark.parametrize("page", hand_written_pages(), ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_lead_to_files_and_anchors_that_exist(page):
    # Sphinx checks the links between docs/ pages too (-n -W); the README is not part of that build.
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve()
        assert linked.exists(), f"{page.relative_to(REPO)}: {target} does not exist"
        if anchor and linked.suffix == ".md" and "_generated" not in linked.parts:
            assert anchor in anchors(linked), f"{page.relative_to(REPO)}: no #{anchor} in {path}"
