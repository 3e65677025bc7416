"""The event log under real storage failures: another process holding SQLite's write lock, a full filesystem, a
read-only state folder. The caller never waits, nothing already written is lost, and what was queued is written
in order once storage is back."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import threading
from pathlib import Path

import pytest
from support.wait import wait_for

from appliance.reporting import events as events_mod
from appliance.reporting.events import EventLog, StorageError

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounts a real filesystem (CI runs as root)")


def rows(db: Path) -> list[tuple]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
        return con.execute("SELECT id, kind, state, detail FROM events ORDER BY id").fetchall()


@pytest.fixture
def fast_retry(monkeypatch):
    monkeypatch.setattr(events_mod, "RETRY_FIRST", 0.02)
    monkeypatch.setattr(events_mod, "RETRY_LONGEST", 0.1)


@pytest.fixture
def mount(tmp_path):
    """Mount a real filesystem on a folder for one test: mount(dir, "tmpfs", "size=...") or a read-only bind."""
    mounted: list[Path] = []

    def do(target: Path, *args: str) -> None:
        target.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", *args, str(target)], check=True)
        mounted.append(target)

    yield do
    for target in reversed(mounted):
        subprocess.run(["umount", "-l", str(target)], check=False)


def test_records_are_stored_in_order_with_ids_and_handed_to_outputs(tmp_path):
    seen: list[dict] = []

    class Output:
        def on_record(self, record):
            seen.append(record)

        def on_status(self, status):
            seen.append({"status": status})

        def on_frame(self, frame):
            pass

        def close(self):
            seen.append({"closed": True})

    log = EventLog(tmp_path / "events.db", status_path=tmp_path / "status.json")
    log.subscribe(Output())
    log.record("start", None, model="abc")
    log.record("decision", "deny", unmasked=1)
    log.status({"door": "locked", "frames": 3})
    assert log.flush()
    log.close()
    assert [(r[1], r[2], json.loads(r[3])) for r in rows(tmp_path / "events.db")] == [
        ("start", None, {"model": "abc"}), ("decision", "deny", {"unmasked": 1})]
    assert [r["id"] for r in seen[:2]] == [1, 2] and seen[1]["detail"] == {"unmasked": 1}
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["door"] == "locked" and status["events"]["written"] == 2 and status["events"]["failures"] == {}
    assert seen[2] == {"status": status} and seen[-1] == {"closed": True}
    assert log.since(1) == [seen[1]]


def test_another_process_holding_the_write_lock_never_stalls_the_caller_and_loses_nothing(tmp_path, fast_retry):
    db = tmp_path / "events.db"
    log = EventLog(db)
    log.record("start")
    assert log.flush()
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # as another process would, for longer than SQLite's busy timeout
    returned = threading.Event()

    def loop():  # the frame loop: fifty decisions while storage is locked
        for i in range(50):
            log.record("decision", "deny" if i % 2 else "idle", frame=i)
        returned.set()

    threading.Thread(target=loop, daemon=True).start()
    # No clock decides it: the lock is held until this test lets go, so a record() that waited for the database
    # would never return (30 s: a hang detector, not a speed limit; 50 records take a millisecond).
    assert returned.wait(30), "record() waited for the database"
    wait_for(lambda: log.failures["database"] >= 1, what="the writer to meet the lock")
    # All fifty returned while storage was locked: none is stored, all but the one the writer retries wait.
    assert log.health()["pending"] >= 49 and len(rows(db)) == 1
    holder.execute("ROLLBACK")
    holder.close()
    assert log.flush(10)
    log.close()
    stored = rows(db)
    assert [json.loads(r[3])["frame"] for r in stored[1:]] == list(range(50))
    assert log.health()["failing"] == []


@needs_root
def test_a_full_disk_queues_records_until_space_returns(tmp_path, fast_retry, mount):
    state = tmp_path / "state"
    mount(state, "-t", "tmpfs", "-o", "size=8m", "tmpfs")
    log = EventLog(state / "events.db", status_path=state / "status.json")
    log.record("start")
    assert log.flush()
    filler = state / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:  # fill the filesystem to the last block
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError:
        pass
    finally:
        os.close(fd)
    for i in range(200):
        log.record("decision", "deny", frame=i, padding="x" * 200)
    log.status({"door": "locked"})
    wait_for(lambda: log.failures["database"] >= 1, what="the writer to meet the full disk")
    before = len(rows(state / "events.db"))
    assert before < 201
    filler.unlink()
    assert log.flush(20)
    log.close()
    stored = rows(state / "events.db")
    assert [json.loads(r[3])["frame"] for r in stored[1:]] == list(range(200))
    assert json.loads((state / "status.json").read_text())["door"] == "locked"


@needs_root
def test_a_read_only_state_folder_at_start_is_one_line_naming_it(tmp_path, mount):
    state = tmp_path / "state"
    state.mkdir()
    mount(state, "--bind", "-o", "ro", str(tmp_path / "state"))
    subprocess.run(["mount", "-o", "remount,bind,ro", str(state)], check=True)
    with pytest.raises(StorageError) as err:
        EventLog(state / "events.db")
    assert str(err.value).startswith(f"{state}: the state folder cannot hold the event log events.db")
    assert "\n" not in str(err.value)


def test_an_unwritable_state_folder_at_start_is_refused_too(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the state folder should be")
    with pytest.raises(StorageError, match=f"^{blocker}: the state folder cannot hold the event log"):
        EventLog(blocker / "events.db")


@needs_root
def test_a_state_folder_turned_read_only_while_running_keeps_everything_for_later(tmp_path, fast_retry, mount):
    state = tmp_path / "state"
    state.mkdir()
    log = EventLog(state / "events.db", status_path=state / "status.json")
    log.record("start")
    assert log.flush()
    mount(state, "--bind", str(state))
    subprocess.run(["mount", "-o", "remount,bind,ro", str(state)], check=True)
    for i in range(20):
        log.record("decision", "allow", frame=i)
    log.status({"door": "released"})
    wait_for(lambda: log.failures["status file"] >= 1, what="the writer to meet the read-only folder")
    # The database was open before: its descriptor still writes. status.json is a new file each time: refused.
    assert log.failures["status file"] >= 1 and log.health()["failing"] == ["status file"]
    assert not (state / "status.json").exists()
    subprocess.run(["mount", "-o", "remount,bind,rw", str(state)], check=True)
    assert log.flush(20)
    log.close()
    assert [json.loads(r[3]).get("frame") for r in rows(state / "events.db")] == [None, *range(20)]
    assert json.loads((state / "status.json").read_text())["door"] == "released"


def test_a_broken_output_is_counted_and_the_others_still_get_every_record(tmp_path):
    got: list[int] = []

    class Broken:
        def on_record(self, record):
            raise RuntimeError("broker exploded")

        def on_status(self, status):
            pass

        def on_frame(self, frame):
            pass

        def close(self):
            pass

    class Good(Broken):
        def on_record(self, record):
            got.append(record["id"])

    log = EventLog(tmp_path / "events.db")
    log.subscribe(Broken())
    log.subscribe(Good())
    for _ in range(3):
        log.record("fault", None, what="x")
    assert log.flush()
    log.close()
    assert got == [1, 2, 3] and log.failures["output Broken"] == 3


def test_a_full_queue_drops_new_records_counts_them_and_keeps_the_old(tmp_path, fast_retry):
    db = tmp_path / "events.db"
    log = EventLog(db, queue_size=5)
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    for i in range(20):
        log.record("decision", "deny", frame=i)
    assert log.dropped >= 14 and log.failures["queue full"] == log.dropped
    holder.execute("ROLLBACK")
    holder.close()
    assert log.flush(10)
    log.close()
    frames = [json.loads(r[3])["frame"] for r in rows(db)]
    assert frames == list(range(len(frames))) and 5 <= len(frames) <= 6


def test_deferred_writes_run_in_order_once_and_a_failure_is_counted_not_retried(tmp_path):
    log = EventLog(tmp_path / "events.db")
    done: list[str] = []
    log.record("start")
    log.defer("collect", lambda: done.append("first"))

    def full_disk():
        done.append("failed")
        raise OSError(28, "No space left on device")

    log.defer("collect", full_disk)
    log.record("stop")
    log.defer("collect", lambda: done.append("after"))
    assert log.flush()
    log.close()
    assert done == ["first", "failed", "after"]
    assert log.failures["collect"] == 1 and log.health()["failing"] == []
    assert [r[1] for r in rows(tmp_path / "events.db")] == ["start", "stop"]
