"""mask-deploy's faults (issue #13, items 10 to 13) against the real sshd and the fake Pis of plugins/deploy.py:
racing pushes, hostile host names and ssh configs, login banners, a killed service, a power cut, a read-only
database, control characters from a Pi, and the rollback target across failed pushes and re-pushes."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from support.data import REPO, SHIPPED, pi_service_config
from support.deploy import deploy, models_of, sha_of, unloadable

from deploy import ssh, status

SHIPPED_SHA = sha_of(SHIPPED)


def table_row(out: str, host: str) -> str:
    (row,) = [line for line in out.splitlines() if line.startswith(host + " ")]
    return row


# -- item 11: ssh options, banners, bad hosts ---------------------------------------------------------------------

def test_a_host_name_starting_with_a_dash_never_reaches_ssh_as_an_option(sshd, pis, variants, tmp_path, capsys):
    (a,) = pis("pi-a")
    marker = tmp_path / "proxy-command-ran"
    evil = f"-oProxyCommand=touch {marker}"
    assert deploy(sshd, "push", "--model", str(variants(1)), "--", evil, "pi-a") == 1
    out = capsys.readouterr().out
    assert not marker.exists()
    assert "FAILED" in table_row(out, "-oProxyCommand=touch") and "starts with '-'" in out
    assert " ok " in table_row(out, "pi-a") and a.sha256 == sha_of(variants(1))  # the good host is not held back
    # and the destination always follows "--", whatever it looks like
    base = ssh.Host("pi-a").base
    assert base[-2:] == ["--", "pi-a"]


def test_agent_x11_and_port_forwarding_are_off_whatever_the_ssh_config_says(sshd, pis, variants, tmp_path,
                                                                          monkeypatch, capsys):
    d, hosts = sshd
    (pi,) = pis("pi-hostile")
    agent = subprocess.run(["ssh-agent", "-s", "-a", str(tmp_path / "agent.sock")], capture_output=True, text=True,
                           check=True)
    pid = int(agent.stdout.split("SSH_AGENT_PID=")[1].split(";")[0])
    try:
        monkeypatch.setenv("SSH_AUTH_SOCK", str(tmp_path / "agent.sock"))
        monkeypatch.setenv("DISPLAY", ":0")
        assert deploy(sshd, "push", "pi-hostile", "--model", str(variants(1))) == 0, capsys.readouterr().out
        assert pi.sha256 == sha_of(variants(1))
        # sshd puts SSH_AUTH_SOCK into a session only when the client forwards its agent: it never did
        assert not Path(f"{hosts['pi-hostile']}.agent-forwarded").exists()
    finally:
        os.kill(pid, signal.SIGTERM)
    # the client's own view of the settings it used, with the operator's hostile config
    effective = subprocess.run(["ssh", "-G", *ssh.SSH_OPTIONS, "-F", str(d / "ssh_config"), "--", "pi-hostile"],
                               capture_output=True, text=True, check=True).stdout.splitlines()
    for setting in ("forwardagent no", "forwardx11 no", "clearallforwardings yes", "stricthostkeychecking true",
                    "batchmode yes"):
        assert setting in effective


def test_a_login_banner_on_stdout_fails_nothing_and_leaves_no_temporary_files(sshd, pis, variants, capsys):
    banner, a = pis("pi-banner", "pi-a")
    assert deploy(sshd, "push", "pi-banner", "pi-a", "--model", str(variants(2))) == 0, capsys.readouterr().out
    assert banner.sha256 == a.sha256 == sha_of(variants(2))
    for pi in (banner, a):
        assert not list((pi.state / "models").glob(".incoming*"))
        assert not list((pi.state / "models").glob(".pending*"))
    capsys.readouterr()
    assert deploy(sshd, "status", "pi-banner") == 0
    assert "running" in table_row(capsys.readouterr().out, "pi-banner")


# -- item 10: two pushes at once ----------------------------------------------------------------------------------

def _push_process(sshd, model: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "deploy.cli", "--ssh-config", str(sshd[0] / "ssh_config"),
                             "--timeout", "20", "push", "pi-a", "--model", str(model)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_two_pushes_to_one_host_at_once_take_turns_and_say_what_happened(sshd, pis, variants):
    (pi,) = pis("pi-a")
    one, two = variants(3), variants(4)
    first, second = _push_process(sshd, one), _push_process(sshd, two)
    outs = [p.communicate(timeout=120)[0] for p in (first, second)]
    assert first.returncode == 0 and second.returncode == 0, outs
    models = models_of(pi.state)  # every pair on the Pi matches its card
    assert set(models) == {"mask_classifier.tflite", "mask_classifier.previous.tflite"}, models
    live, previous = models["mask_classifier.tflite"], models["mask_classifier.previous.tflite"]
    assert {live, previous} == {sha_of(one), sha_of(two)}  # the last one is live, the other is the previous
    assert pi.sha256 == live
    assert not list((pi.state / "models").glob(".incoming*"))


def test_a_push_waits_for_the_lock_and_gives_up_after_lock_wait_changing_nothing(sshd, pis, variants, capsys):
    (pi,) = pis("pi-a")
    holder = ssh.Host("pi-a", sshd[0] / "ssh_config", ssh.Timeouts(lock=5))
    with holder.locked():  # a rollback or push in progress on the Pi
        started = time.monotonic()
        assert deploy(sshd, "--lock-wait", "1", "push", "pi-a", "--model", str(variants(1))) == 1
        waited = time.monotonic() - started
    assert "still holds the models folder after 1 s; nothing was changed" in capsys.readouterr().out
    assert waited < 10
    assert pi.sha256 == SHIPPED_SHA and models_of(pi.state) == {"mask_classifier.tflite": SHIPPED_SHA}
    assert not list((pi.state / "models").glob(".incoming*"))
    # released: the same push now goes through
    assert deploy(sshd, "push", "pi-a", "--model", str(variants(1))) == 0
    assert pi.sha256 == sha_of(variants(1))


# -- item 13: the rollback target, the upload timeout -------------------------------------------------------------

def test_a_failed_push_and_a_re_push_leave_the_rollback_target_alone(sshd, pis, variants, tmp_path, capsys):
    (pi,) = pis("pi-a")
    v1 = variants(1)
    assert deploy(sshd, "push", "pi-a", "--model", str(v1)) == 0
    assert models_of(pi.state) == {"mask_classifier.tflite": sha_of(v1), "mask_classifier.previous.tflite":
                                   SHIPPED_SHA}
    capsys.readouterr()
    # a push the service refuses: v1 comes back, and the shipped model stays the rollback target
    assert deploy(sshd, "--timeout", "3", "push", "pi-a", "--model", str(unloadable(tmp_path))) == 1
    assert "rolled back to the previous model" in capsys.readouterr().out
    assert pi.sha256 == sha_of(v1)
    assert models_of(pi.state) == {"mask_classifier.tflite": sha_of(v1), "mask_classifier.previous.tflite":
                                   SHIPPED_SHA}
    # the live model pushed again: nothing to roll back to changes
    assert deploy(sshd, "push", "pi-a", "--model", str(v1)) == 0
    assert "already running this model; previous kept" in capsys.readouterr().out
    assert models_of(pi.state)["mask_classifier.previous.tflite"] == SHIPPED_SHA
    # so a rollback still reaches the model before v1
    assert deploy(sshd, "rollback", "pi-a") == 0
    assert pi.sha256 == SHIPPED_SHA


def test_the_upload_timeout_is_an_option_and_a_timed_out_upload_leaves_nothing(sshd, pis, variants, capsys):
    (pi,) = pis("pi-a")
    assert deploy(sshd, "--upload-timeout", "0.01", "push", "pi-a", "--model", str(variants(1))) == 1
    assert "upload card: no answer in 0 s" in capsys.readouterr().out
    time.sleep(0.5)  # the killed upload's remote half ends when its channel closes
    assert not list((pi.state / "models").glob(".incoming*"))
    assert pi.sha256 == SHIPPED_SHA
    with pytest.raises(SystemExit):
        deploy(sshd, "--upload-timeout", "-1", "push", "pi-a")


# -- item 12: status tells the truth ------------------------------------------------------------------------------

def _service_process(state: Path, tmp_path: Path) -> subprocess.Popen:
    """The real service as its own process (`mask-appliance run`), on a still scene, in a fake Pi's state folder."""
    cfg = pi_service_config(state, tmp_path, "still_frames = 1000\nfps = 5\n", "[service]\nstatus_interval = 1\n")
    env = {**os.environ, "GPIOZERO_PIN_FACTORY": "mock"}
    proc = subprocess.Popen([str(Path(sys.executable).parent / "mask-appliance"), "run", "--config", str(cfg)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not (state / "status.json").exists():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline
        time.sleep(0.1)
    return proc


def test_status_after_a_sigkill_says_the_service_is_not_running(sshd, tmp_path, capsys):
    state = sshd[1]["pi-proc"]
    shutil.rmtree(state, ignore_errors=True)
    proc = _service_process(state, tmp_path)
    try:
        assert deploy(sshd, "status", "pi-proc") == 0
        assert table_row(capsys.readouterr().out, "pi-proc").split()[3] == "running,"
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        assert json.loads((state / "status.json").read_text())["running"] is True  # what it last wrote
        started = time.monotonic()
        assert deploy(sshd, "status", "pi-proc") == 1
        assert time.monotonic() - started < 5  # at once, not after a staleness timeout
        row = table_row(capsys.readouterr().out, "pi-proc")
        assert "NOT RUNNING" in row and f"pid {proc.pid} is gone" in row
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _fake_state(state: Path, status: dict, age: float = 0.0) -> None:
    """A Pi's state folder as the service left it, without the service: status.json with the given age."""
    shutil.rmtree(state, ignore_errors=True)
    (state / "models").mkdir(parents=True)
    (state / "status.json").write_text(json.dumps(status))
    con = sqlite3.connect(state / "events.db")  # the service's schema, with no decision yet
    con.execute("CREATE TABLE events (id INTEGER PRIMARY KEY, time REAL, kind TEXT, state TEXT, detail TEXT)")
    con.close()
    then = time.time() - age
    os.utime(state / "status.json", (then, then))


def test_status_after_a_power_cut_says_the_service_is_not_running(sshd, capsys):
    # After a reboot, status.json from before the cut says "running" and its pid may belong to another process.
    _fake_state(sshd[1]["pi-files"], {"pid": os.getpid(), "running": True, "uptime": 1.0, "door": "locked",
                                      "model_sha256": SHIPPED_SHA, "fps": 5.0}, age=600)
    assert deploy(sshd, "status", "pi-files") == 1
    row = table_row(capsys.readouterr().out, "pi-files")
    assert re.search(r"FAILED .* NOT RUNNING \(no status for 60[0-9] s\)", row), row


def test_liveness_follows_systemd_where_the_pi_runs_it():
    fresh = {"status": {"pid": 1, "running": True}, "age": 1.0, "pid_alive": True}
    assert status.judge(fresh) == (True, [])
    assert status.judge({**fresh, "systemd": "active"}) == (True, [])
    assert status.judge({**fresh, "systemd": "failed"}) == (False, ["systemd says failed"])
    assert status.judge({**fresh, "systemd": "activating"}) == (False, ["systemd says activating"])
    assert status.judge({**fresh, "age": 26.0}) == (False, ["no status for 26 s"])
    assert status.judge({**fresh, "age": 26.0, "status": {"running": True, "status_interval": 60}}) == (True, [])
    assert status.judge({"error": "status.json: No such file"}) == (False, ["status.json: No such file"])


def _decisions(db: Path) -> list:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return con.execute("SELECT state FROM events WHERE kind = 'decision'").fetchall()
    finally:
        con.close()


def test_status_of_a_stopped_service_reads_its_events_as_a_non_root_deploy_user(sshd, pis, deploy_user, capsys):
    if deploy_user is None:
        pytest.skip("needs root, to make a second user and let sshd log in as it")
    (pi,) = pis("pi-deployer")
    deadline = time.monotonic() + 30
    while not _decisions(pi.state / "events.db"):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    pi.stop()
    # A clean stop leaves no -shm file for a reader to share, and the deploy user may not create one: the state
    # folder is root's and not writable by others.
    assert not Path(f"{pi.state}/events.db-shm").exists()
    st = pi.state.stat()
    assert st.st_uid == 0 and not st.st_mode & 0o022
    assert deploy(sshd, "status", "pi-deployer") == 1
    row = table_row(capsys.readouterr().out, "pi-deployer")
    assert "NOT RUNNING (it stopped)" in row
    assert "readonly" not in row and "unreadable" not in row
    assert " deny" in row or " allow" in row  # the last decisions, read


def test_control_characters_from_a_pi_never_reach_the_terminal(sshd, capsys):
    _fake_state(sshd[1]["pi-files"], {"pid": os.getpid(), "running": True, "uptime": 1.0, "fps": 5.0,
                                      "door": "\x1b[2J\x1b[Hlocked\rpi-a ok", "model_sha256": "\x1b]0;owned\x07"})
    assert deploy(sshd, "status", "pi-files") == 0
    out = capsys.readouterr().out
    for raw in ("\x1b", "\r", "\x07"):
        assert raw not in out
    assert "\\x1b[2J\\x1b[Hlocked\\rpi-a ok" in out


def test_one_host_that_raises_does_not_stop_the_others(sshd, pis, variants, monkeypatch, capsys):
    (a,) = pis("pi-a")
    real = ssh.Host.run

    def flaky(self, script, **kw):
        if self.name == "pi-b":
            raise RuntimeError("surprise")
        return real(self, script, **kw)

    monkeypatch.setattr(ssh.Host, "run", flaky)
    assert deploy(sshd, "push", "pi-b", "pi-a", "--model", str(variants(1))) == 1
    out = capsys.readouterr().out
    assert "unexpected error: RuntimeError('surprise')" in table_row(out, "pi-b")
    assert " ok " in table_row(out, "pi-a") and a.sha256 == sha_of(variants(1))


def test_the_lock_is_released_when_the_client_dies(sshd, pis):
    (pi,) = pis("pi-a")
    cfg = str(sshd[0] / "ssh_config")
    # a client holding the lock, killed: ssh closes the channel and the Pi's flock ends with it
    script = ("import sys; from pathlib import Path; from deploy.ssh import Host; "
              f"h = Host('pi-a', Path({cfg!r}))\n"
              "with h.locked():\n    print('held', flush=True); sys.stdin.read()")
    holder = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    busy = ssh.Host("pi-a", Path(cfg), ssh.Timeouts(lock=1))
    with pytest.raises(Exception, match="still holds"), busy.locked():
        pass
    holder.kill()
    holder.wait()
    got = threading.Event()
    with ssh.Host("pi-a", Path(cfg), ssh.Timeouts(lock=10)).locked():
        got.set()
    assert got.is_set()
