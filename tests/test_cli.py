"""`mask-appliance detect` and `check`, and what the three commands share (exit codes, --version), run as a user
runs them."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sqlite3
import subprocess
import sys

import cv2
import pytest
from support.data import REPO, SCENES, SHIPPED, scene_images

from appliance.seeing.card import load_card

CARD = load_card(SHIPPED.with_suffix(".json"))
# A 3-class model adds p_incorrect_mask to each face; a 2-class model's faces keep the four fields.
FIELDS = {"box", "score", "p_without_mask", "label"} | ({"p_incorrect_mask"} if len(CARD.labels) == 3 else set())


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "appliance.cli", *args], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "GPIOZERO_PIN_FACTORY": "mock", **(env or {})}, timeout=120)


def test_detect_json_prints_one_object_per_image_and_nothing_else(tmp_path):
    images = scene_images("without_mask", limit=2) + scene_images("with_mask", limit=1)
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff garbage")
    result = run_cli("detect", "--json", *map(str, images), str(corrupt))
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert len(lines) == 3
    for line, path in zip(lines, images, strict=True):
        record = json.loads(line)
        assert record["image"] == str(path) and set(record) == {"image", "faces"}
        height, width = cv2.imread(str(path)).shape[:2]
        for face in record["faces"]:
            assert set(face) == FIELDS
            x1, y1, x2, y2 = face["box"]
            assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height
            assert 0 <= face["p_without_mask"] <= 1 and 0 < face["score"] <= 1
            assert face["label"] in CARD.labels
            assert (face["label"] == "with_mask") == (face["p_without_mask"] < CARD.threshold)
            if "p_incorrect_mask" in face:  # part of p(not properly masked)
                assert 0 <= face["p_incorrect_mask"] <= face["p_without_mask"] + 0.01
    assert json.loads(lines[0])["faces"][0]["label"] != "with_mask"
    assert {f["label"] for f in json.loads(lines[2])["faces"]} == {"with_mask"}
    assert "corrupt.jpg: unreadable image, skipped" in result.stderr


def test_detect_writes_annotated_images(tmp_path):
    image = scene_images("without_mask", limit=1)[0]
    result = run_cli("detect", "--out", str(tmp_path / "out"), str(image))
    assert result.returncode == 0, result.stderr
    written = cv2.imread(str(tmp_path / "out" / (image.stem + ".jpg")))
    assert written.shape == cv2.imread(str(image)).shape
    assert (cv2.absdiff(written, cv2.imread(str(image))) > 60).any()  # boxes were drawn


def test_check_reports_what_is_missing():
    result = run_cli("check")
    assert result.returncode == 1  # no Picamera2 on this machine
    lines = {line.split()[1]: line for line in result.stdout.splitlines()}
    assert lines["camera"].startswith("FAIL") and "picamera2" in lines["camera"]
    assert lines["gpio"].startswith("ok") and "MockFactory" in lines["gpio"] and "released" in lines["gpio"]
    assert lines["detector"].startswith("ok") and lines["model"].startswith("ok")
    assert f"threshold {CARD.threshold}," in lines["model"] and f"labels {'/'.join(CARD.labels)}" in lines["model"]


def test_check_passes_with_a_file_source_and_names_a_missing_asset_mirror(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text('[source]\nspec = "/srv/door.mp4"\n')
    assert run_cli("check", "--config", str(config)).returncode == 0
    result = run_cli("check", "--config", str(config),
                     env={"MASK_APPLIANCE_ASSETS": str(tmp_path / "none"), "MASK_APPLIANCE_CACHE": str(tmp_path)})
    detector = [line for line in result.stdout.splitlines() if " detector " in line][0]
    assert detector.startswith("FAIL") and "asset 'yunet' not found" in detector


# -- one command family (issue #14, item 4) ------------------------------------------------------------------------

def test_check_rows_come_from_checkup_and_one_failing_probe_hides_no_other():
    from appliance import config
    from appliance.checkup import Row, run_checks

    cfg = config.parse({"source": {"spec": "/srv/door.mp4"}}, "<test>")
    assert [(r.what, r.ok) for r in run_checks(cfg)] == [("runtime", True), ("camera", True), ("gpio", True),
                                                          ("detector", True), ("model", True)]
    from gpiozero import OutputDevice

    holder = OutputDevice(cfg.gpio.relay_pin)  # the relay's pin is taken: the door cannot be built
    try:
        rows = run_checks(cfg)
    finally:
        holder.close()
    gpio = rows[2]
    assert gpio.what == "gpio" and not gpio.ok and gpio.detail.startswith("GPIOPinInUse")
    assert [r.ok for r in rows[3:]] == [True, True]  # the probes after it still ran
    assert str(Row(False, "gpio", "x")) == "FAIL  gpio         x"


def _closed_pipe_run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The command with its stdout a real pipe whose reader is already gone (as after `| head` exits)."""
    read, write = os.pipe()
    os.close(read)
    try:
        proc = subprocess.run([sys.executable, "-m", "appliance.cli", *args], stdout=write, stderr=subprocess.PIPE,
                              text=True, cwd=REPO, env={**os.environ, "GPIOZERO_PIN_FACTORY": "mock", **(env or {})},
                              timeout=120)
    finally:
        os.close(write)
    return proc


def test_output_into_a_closed_pipe_ends_quietly():
    config = _closed_pipe_run("config")
    assert (config.returncode, config.stderr) == (141, "")  # 128 + SIGPIPE, as `yes | head` ends; no "Broken pipe"
    image = scene_images("without_mask", limit=1)[0]
    detect = _closed_pipe_run("detect", "--json", str(image))
    assert detect.returncode == 141
    assert "Broken pipe" not in detect.stderr and "Traceback" not in detect.stderr


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash (the release-tests chroot has none)")
def test_config_into_head_through_a_shell_pipe_ends_quietly():
    """Through a shell's own pipe into head, as a user types it: the first line, nothing on stderr."""
    shell = subprocess.run(["bash", "-c", f"set -o pipefail; {sys.executable} -m appliance.cli config | head -1"],
                           capture_output=True, text=True, cwd=REPO, timeout=60)
    assert shell.stdout == "[source]\n" and shell.stderr == "" and shell.returncode in (0, 141)


def test_run_print_into_a_closed_pipe_stops_the_printing_not_the_door(tmp_path):
    image = str(scene_images("without_mask", limit=1)[0])
    proc = _closed_pipe_run("run", "--print", "--source", image, env={"STATE_DIRECTORY": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and "no longer printed" in proc.stderr
    db = sqlite3.connect(tmp_path / "events.db")
    kinds = [k for (k,) in db.execute("SELECT kind FROM events ORDER BY id")]
    db.close()
    assert kinds == ["start", "decision", "stop"]  # the deny was logged; no crash fault


def test_bad_input_is_exit_2_and_one_line_in_every_sub_command(tmp_path):
    bad = tmp_path / "config.toml"
    bad.write_text("[gpio]\nrelay_pin = 40\n")
    line = f"{bad}: [gpio] relay_pin = 40 is outside 0..27"
    image = str(scene_images("without_mask", limit=1)[0])
    for args in (["run", "--config", str(bad)], ["detect", "--json", "--config", str(bad), image]):
        result = run_cli(*args)
        assert (result.returncode, result.stderr.strip().splitlines()) == (2, [f"mask-appliance: {line}"])
    check = run_cli("check", "--config", str(bad))
    assert (check.returncode, check.stdout) == (2, f"FAIL  config       {line}\n")
    assert run_cli("detect", "--json", str(tmp_path / "nothing-here")).returncode == 2
    assert run_cli("detect", image).returncode == 2  # neither --out nor --json
    assert run_cli("run", "--no-such-option").returncode == 2


def test_a_model_that_does_not_match_its_card_is_exit_2(tmp_path, model_dir):
    model = model_dir / SHIPPED.name
    model.write_bytes(model.read_bytes() + b"x")
    config = tmp_path / "config.toml"
    config.write_text(f'[classifier]\nmodel = "{model}"\n[events]\ndatabase = "{tmp_path / "events.db"}"\n')
    image = str(scene_images("without_mask", limit=1)[0])
    detect = run_cli("detect", "--json", "--config", str(config), image)
    assert detect.returncode == 2 and "does not match its card" in detect.stderr and detect.stdout == ""
    run = run_cli("run", "--config", str(config), "--source", image, env={"STATE_DIRECTORY": str(tmp_path)})
    assert run.returncode == 2 and "does not match its card" in run.stderr  # was 1 before issue 14


def test_verbose_after_the_sub_command_and_the_exit_codes_in_every_help():
    assert run_cli("config", "-v").returncode == 0
    for args in (["--help"], ["run", "--help"], ["detect", "--help"], ["check", "--help"], ["config", "--help"]):
        out = run_cli(*args).stdout
        assert "exit codes:" in out and "1    a fault at run time" in out and "-v, --verbose" in out, args


@pytest.mark.parametrize(("prog", "module"), [("mask-appliance", "appliance.cli"), ("mask-deploy", "deploy.cli"),
                                              ("mask-train", "training.cli")])
def test_version_of_every_command(prog, module):
    if module == "training.cli" and os.environ.get("MASK_RUNTIME_ONLY") == "1":
        pytest.skip("needs the training kit, which is not part of the Pi runtime")
    from appliance import __version__

    result = subprocess.run([sys.executable, "-m", module, "--version"], capture_output=True, text=True, cwd=REPO,
                            timeout=120)
    assert (result.returncode, result.stdout, result.stderr) == (0, f"{prog} {__version__}\n", "")
    assert "--version" in subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True,
                                         cwd=REPO, timeout=120).stdout


def _benchmark(name: str):
    """benchmarks/<name>.py as a module, without putting the benchmarks folder on sys.path."""
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_json_in_the_benchmarks_is_one_document_on_stdout_as_in_detect(monkeypatch, capsys):
    compare = _benchmark("compare")
    files = sorted((SCENES / "images").iterdir())[:3]
    raw = compare.run_ours(files, threads=1)  # our pipeline for real on 3 scenes; it stands in for both children
    del raw["classify_boxes"]
    raw.update(peak_rss_mb=100.0, frames=len(files))
    monkeypatch.setattr(compare, "_run_child", lambda name, args, env: raw)
    argv = ["--source", str(SCENES / "images"), "--limit", "3", "--rounds", "1"]
    assert compare.main([*argv, "--json"]) == 0
    out, err = capsys.readouterr()
    doc = json.loads(out)  # the whole of stdout is one JSON document
    assert set(doc) == {"ours", "classic"} and doc["ours"]["frames"] == 3 and doc["ours"]["faces"] == raw["faces"]
    assert "faster per frame" in err and err.startswith("pipeline ")
    assert compare.main(argv) == 0
    out, err = capsys.readouterr()
    assert out.startswith("pipeline ") and "faster per frame" in out and err == ""
    # bad input: exit 2, one line on stderr, nothing on stdout
    classifier = _benchmark("classifier")
    assert classifier.main(["--keras", str(REPO / "none.keras"), "--json"]) == 2
    out, err = capsys.readouterr()
    assert (out, err) == ("", f"classifier.py: {REPO / 'none.keras'}: no such file\n")
    assert compare.main(["--source", str(REPO / "no-such-folder"), "--json"]) == 2
    assert capsys.readouterr().out == ""


def test_detect_skips_an_image_over_source_max_pixels_by_its_header(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text("[source]\nmax_pixels = 10000\nmain_size = [100, 75]\nlores_size = [64, 48]\n")
    small, large = tmp_path / "small.jpg", scene_images("without_mask", limit=1)[0]
    cv2.imwrite(str(small), cv2.resize(cv2.imread(str(large)), (80, 60)))  # 4800 pixels: under the limit
    result = run_cli("detect", "--json", "--config", str(config), str(large), str(small))
    assert result.returncode == 0
    assert [json.loads(line)["image"] for line in result.stdout.splitlines()] == [str(small)]
    assert f"{large}: too large image, skipped (" in result.stderr and "[source] max_pixels = 10000" in result.stderr
