"""deploy/pi-check's own logic: the comparison that decides pass or fail (deploy/compare.py), the Pi config it
derives (deploy/pi_check.py), the CPUs it presents (deploy/qemu.py), the sysroot's pip and apt plans
(deploy/sysroot.py). The whole check (arm64 under qemu) runs in .ci/run as deploy/pi-check."""

from __future__ import annotations

import copy
import json
import re
import tomllib

import pytest
from support.data import SCENES, SHIPPED

from appliance import config as config_mod
from deploy import compare, pi_check, qemu, sysroot

REFERENCE = {
    "a.jpg": [{"box": [10.0, 20.0, 110.0, 150.0], "score": 0.9, "p_without_mask": 0.9961, "label": "without_mask"},
              {"box": [300.0, 40.0, 360.0, 120.0], "score": 0.7, "p_without_mask": 0.0117, "label": "with_mask"}],
    "b.jpg": [],
}


def test_identical_runs_pass_and_report_zero_gaps():
    problems, worst = compare.compare(REFERENCE, copy.deepcopy(REFERENCE))
    assert problems == []
    assert worst == compare.Gaps(faces=2, labels_differ=0, box_px=0.0, p=0.0)
    assert worst.summary().startswith("2 faces, 0 labels differ; largest gaps: box 0.0 px (allowed 2.0)")


def test_gaps_inside_the_tolerance_pass():
    arm = copy.deepcopy(REFERENCE)
    arm["a.jpg"].reverse()  # order is not part of the answer
    arm["a.jpg"][0]["box"][0] += 1.5
    arm["a.jpg"][0]["p_without_mask"] = 0.0117 + 0.0156  # four steps of the int8 output
    problems, worst = compare.compare(REFERENCE, arm)
    assert problems == []
    assert worst.box_px == pytest.approx(1.5) and worst.p == pytest.approx(0.0156)


@pytest.mark.parametrize("change, expected", [
    (lambda r: r["a.jpg"][1].update(label="without_mask"), r"a\.jpg: .* is without_mask on arm64, with_mask here"),
    (lambda r: r["a.jpg"][0].update(p_without_mask=0.95), r"a\.jpg: .* p_without_mask 0\.95 on arm64, 0\.9961 here"),
    (lambda r: r["a.jpg"][0]["box"].__setitem__(3, 155.0), r"a\.jpg: .* boxed .* \(5\.0 px\)"),
    (lambda r: r["a.jpg"].pop(1), r"a\.jpg: face at \[300\.0, .* not found on arm64"),
    (lambda r: r["b.jpg"].append(copy.deepcopy(REFERENCE["a.jpg"][0])),
     r"b\.jpg: arm64 found a face at \[10\.0, .*\] that this machine did not"),
    (lambda r: r.pop("b.jpg"), r"b\.jpg: no result from arm64"),
])
def test_each_kind_of_difference_fails_with_a_line_naming_the_image(change, expected):
    arm = copy.deepcopy(REFERENCE)
    change(arm)
    problems, worst = compare.compare(REFERENCE, arm)
    assert len(problems) == 1 and re.fullmatch(expected, problems[0]), problems
    assert worst.labels_differ == (" is without_mask on arm64" in problems[0])


def test_detect_output_is_parsed_per_image():
    lines = "\n".join(json.dumps({"image": k, "faces": v}) for k, v in REFERENCE.items())
    assert compare.parse_detect(lines) == REFERENCE


def test_the_derived_config_is_the_pi_config_with_images_and_the_shipped_model(tmp_path):
    path = pi_check.pi_config(tmp_path / "config.toml", SCENES / "images", SHIPPED)
    derived, pi = (tomllib.loads(p.read_text()) for p in (path, sysroot.REPO / "deploy/config.pi.toml"))
    assert pi["source"]["spec"] == "picamera2" and pi["classifier"]["model"].startswith("/var/lib/")
    pi["source"]["spec"], pi["classifier"]["model"] = str(SCENES / "images"), str(SHIPPED)
    pi["detector"]["photo_sides"] = [320, 320]  # photos are looked at as the door's frames are: once, at max_side
    assert derived == pi  # everything else, detection at 320 px and four threads among it, is what a Pi runs
    cfg = config_mod.load(path)
    assert cfg.detector.max_side == 320 and cfg.classifier.threads == 4 and cfg.classifier.model == SHIPPED


def test_a_pi_config_without_the_keys_gets_them_and_a_bad_one_is_refused_by_name(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    (repo / "deploy").mkdir(parents=True)
    (repo / "deploy/config.pi.toml").write_text('[detector]\nmax_side = 320\n')
    monkeypatch.setattr(pi_check, "REPO", repo)
    path = pi_check.pi_config(tmp_path / "c.toml", tmp_path, tmp_path / "m.tflite")  # the model need not exist yet
    assert tomllib.loads(path.read_text()) == {"detector": {"max_side": 320, "photo_sides": [320, 320]},
                                               "source": {"spec": str(tmp_path)},
                                               "classifier": {"model": str(tmp_path / "m.tflite")}}
    (repo / "deploy/config.pi.toml").write_text('[detector]\nmax_side = 32000\n')
    with pytest.raises(config_mod.ConfigError,
                       match=r"^deploy/config.pi.toml: \[detector\] max_side = 32000 is outside 64..4096$"):
        pi_check.pi_config(tmp_path / "c.toml", tmp_path, tmp_path / "m.tflite")


def test_cpuinfo_describes_each_pi_and_only_its_own_features():
    for key, part, model in (("pi4", "0xd08", "cortex-a72"), ("pi5", "0xd0b", "cortex-a76")):
        cpu = qemu.CPUS[key]
        text = cpu.cpuinfo()
        assert cpu.qemu == model
        assert re.findall(r"^processor\t: (\d)$", text, re.M) == ["0", "1", "2", "3"]
        assert set(re.findall(r"^CPU part\t: (\S+)$", text, re.M)) == {part}
        assert "Raspberry Pi" in text.splitlines()[-1]
    # The Cortex-A72 has no dot-product or LSE atomics; claiming them makes LiteRT run instructions it lacks.
    pi4 = set(re.search(r"^Features\t: (.*)$", qemu.CPUS["pi4"].cpuinfo(), re.M).group(1).split())
    assert {"asimddp", "atomics"}.isdisjoint(pi4) and {"fp", "asimd", "crc32"} <= pi4


def test_pip_is_offered_every_manylinux_tag_each_release_can_run():
    def platforms(release, arch):
        args = release.pip_target(arch)
        return {args[i + 1] for i, a in enumerate(args) if a == "--platform"}

    bookworm, trixie = sysroot.RELEASES["bookworm"], sysroot.RELEASES["trixie"]
    assert {"manylinux2014_aarch64", "manylinux_2_17_aarch64", "manylinux_2_27_aarch64",
            "manylinux_2_28_aarch64", "manylinux_2_36_aarch64"} <= platforms(bookworm, "arm64")
    assert "manylinux_2_37_aarch64" not in platforms(bookworm, "arm64")  # Bookworm's glibc is 2.36
    assert "manylinux_2_41_aarch64" in platforms(trixie, "arm64")  # Trixie's is 2.41
    assert "manylinux_2_42_aarch64" not in platforms(trixie, "arm64")
    assert all(p.endswith("_x86_64") for p in platforms(trixie, "amd64"))
    args = trixie.pip_target("arm64")
    assert args[args.index("--python-version") + 1] == "3.13" and args[args.index("--abi") + 1] == "cp313"


def test_each_release_has_its_constraints_and_keeps_the_systems_numpy_major():
    for name, numpy_major in (("bookworm", "numpy<2"), ("trixie", "numpy>=2")):
        release = sysroot.RELEASES[name]
        lines = [line for line in release.constraints.read_text().splitlines() if line and line[0] != "#"]
        assert any(line.startswith(numpy_major) for line in lines), lines
        assert "ai-edge-litert==2.3.0" in lines


def test_apt_plan_names_the_files_apt_saves(tmp_path):
    simulation = ("Inst libc6 (2.36-9+deb12u13 Debian:12.13/stable [arm64])\n"
                  "Conf libc6 (2.36-9+deb12u13 Debian:12.13/stable [arm64])\n"
                  "Inst python3-numpy (1:1.24.2-1+deb12u1 Debian:12.13/stable [arm64])\n")
    debs = sysroot.planned_debs(simulation, tmp_path)
    assert [p.name for p in debs] == ["libc6_2.36-9+deb12u13_arm64.deb", "python3-numpy_1%3a1.24.2-1+deb12u1_arm64.deb"]
    assert sysroot.deb_version(debs, "python3-numpy") == "1.24.2"
    trixie = [tmp_path / "python3-numpy_1%3a2.2.4+ds-1_arm64.deb", tmp_path / "python3.13_3.13.5-2_arm64.deb"]
    assert sysroot.deb_version(trixie, "python3-numpy") == "2.2.4"
    assert sysroot.deb_version(trixie, "python3.13") == "3.13.5"


def test_images_are_spread_over_the_folder():
    picked = pi_check.pick_images(SCENES / "images", 6)
    everything = sorted((SCENES / "images").glob("*.jpg"))
    assert len(set(picked)) == 6 and picked[0] == everything[0]
    assert everything.index(picked[-1]) >= len(everything) * 5 // 6 - 1
    with pytest.raises(RuntimeError, match="need 100000"):
        pi_check.pick_images(SCENES / "images", 100000)


def test_a_moved_box_may_move_p_a_little_more_but_an_unmoved_one_may_not():
    arm = copy.deepcopy(REFERENCE)
    arm["a.jpg"][1]["box"][0] += 1.0  # another crop ...
    arm["a.jpg"][1]["p_without_mask"] = 0.0117 + 0.03  # ... and so another p, the label the same
    assert compare.compare(REFERENCE, arm)[0] == []
    arm["a.jpg"][1]["p_without_mask"] = 0.0117 + 0.06
    assert len(compare.compare(REFERENCE, arm)[0]) == 1
    still = copy.deepcopy(REFERENCE)
    still["a.jpg"][1]["p_without_mask"] = 0.0117 + 0.03  # the same box: only arithmetic may differ
    assert len(compare.compare(REFERENCE, still)[0]) == 1


def test_qemu_cpu_replaces_the_model_of_each_chosen_board():
    args = pi_check.parse_args(["--cpu", "pi5", "--qemu-cpu", "neoverse-n1"])
    assert [(c.board, c.qemu, c.part) for c in pi_check.chosen_cpus(args)] == [
        ("Raspberry Pi 5 as neoverse-n1", "neoverse-n1", "0xd0b")]  # the cpuinfo stays the Pi 5's
    assert [c.qemu for c in pi_check.chosen_cpus(pi_check.parse_args([]))] == ["cortex-a72", "cortex-a76"]


def test_the_report_fails_on_any_failed_board(capsys):
    assert pi_check.report(["ok   Bookworm as Raspberry Pi 4: ...", "ok   Trixie as Raspberry Pi 5: ..."], 75.2) == 0
    assert "passed: 2 of 2 release and board runs match this machine, in 75 s" in capsys.readouterr().out
    assert pi_check.report(["ok   Bookworm as Raspberry Pi 4: ...", "FAIL Trixie as Raspberry Pi 5: ..."], 1) == 1
    assert "FAILED: 1 of 2 release and board runs" in capsys.readouterr().out


def test_this_machine_answers_with_the_derived_pi_config(tmp_path):
    images = pi_check.pick_images(SCENES / "images", 2)
    reference = pi_check.this_machine(tmp_path, SCENES / "images", images, pi_check.appliance_env())
    assert sorted(reference) == sorted(map(str, images))
    faces = [f for found in reference.values() for f in found]
    assert faces and all(len(f["box"]) == 4 and 0 <= f["p_without_mask"] <= 1 for f in faces)
    detector = config_mod.load(tmp_path / "config.toml").detector
    assert detector.max_side == 320 and detector.photo_sides == (320, 320)  # the Pi's frames: one look at 320 px
