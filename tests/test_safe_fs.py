"""Writes under the data directory never follow a symbolic link (app/safe_fs.py), no Docker: every link
planted here points outside the data directory, and what it points at must stay as it was."""

from __future__ import annotations

import asyncio
import os
import stat
import threading
from pathlib import Path

import pytest

from app.safe_fs import SafeDir, UnsafePath

SENTENCE = "is a symbolic link; TuneDeck does not write through links in the data directory."


@pytest.fixture
def place(tmp_path):
    data, outside = tmp_path / "data", tmp_path / "outside"
    data.mkdir()
    outside.mkdir()
    (outside / "victim").write_text("keep")
    return data, outside, SafeDir(data)


def untouched(outside: Path) -> dict:
    return {p.name: (p.read_text() if p.is_file() else "dir") for p in outside.rglob("*")}


def test_a_symlinked_folder_anywhere_on_the_way_is_refused_in_one_sentence(place):
    data, outside, fs = place
    before = untouched(outside)
    (data / "exports").mkdir()
    (data / "exports" / "run-1").symlink_to(outside)
    for write in (lambda: fs.write_text(data / "exports/run-1/eval/x.txt", "x"),
                  lambda: fs.mkdirs(data / "exports/run-1/.stamps"),
                  lambda: fs.new_file(data / "exports/run-1/a.gguf.partial"),
                  lambda: fs.new_dir(data / "exports/run-1/merged.partial"),
                  lambda: fs.open_fd(data / "exports/run-1/victim", os.O_RDWR)):
        with pytest.raises(UnsafePath) as exc:
            write()
        assert str(exc.value) == f"exports/run-1 {SENTENCE}"
    assert untouched(outside) == before


def test_a_link_at_the_final_name_is_replaced_never_written_through(place):
    data, outside, fs = place
    (data / "merge.yaml").symlink_to(outside / "victim")
    (data / "new.partial").symlink_to(outside / "absent")
    fs.write_text(data / "merge.yaml", "model: x\n")
    assert (data / "merge.yaml").read_text() == "model: x\n" and not (data / "merge.yaml").is_symlink()
    with pytest.raises(UnsafePath, match=f"new.partial {SENTENCE}"):
        fs.new_file(data / "new.partial")  # nothing may sit where a tool's output is claimed
    with pytest.raises(UnsafePath, match=f"new.partial {SENTENCE}"):
        fs.open_fd(data / "new.partial", os.O_RDWR | os.O_CREAT)
    assert (outside / "victim").read_text() == "keep" and not (outside / "absent").exists()
    assert not [p for p in data.iterdir() if p.name.endswith(".partial") and not p.is_symlink()]  # no temp left


def test_writes_are_atomic_with_their_mode_and_leave_no_temp_file(place):
    data, _, fs = place
    fs.write_text(data / "login", "admin:pw\n", mode=0o600)
    assert stat.S_IMODE((data / "login").stat().st_mode) == 0o600
    with pytest.raises(RuntimeError):
        with fs.replacing(data / "login") as f:
            f.write(b"half")
            raise RuntimeError("the writer failed")
    assert (data / "login").read_text() == "admin:pw\n"
    assert sorted(p.name for p in data.iterdir()) == ["login"]


def test_a_rename_refuses_a_link_and_a_removal_removes_the_link_itself(place):
    data, outside, fs = place
    (data / "out.gguf.partial").symlink_to(outside / "victim")
    with pytest.raises(UnsafePath, match=f"out.gguf.partial {SENTENCE}"):
        fs.replace(data / "out.gguf.partial", data / "out.gguf")
    assert not (data / "out.gguf").exists()
    assert fs.remove(data / "out.gguf.partial") and not fs.remove(data / "out.gguf.partial")
    (data / "merged.partial").symlink_to(outside)
    assert fs.remove(data / "merged.partial")
    assert (outside / "victim").read_text() == "keep"
    (data / "merged.partial").mkdir()
    (data / "merged.partial" / "config.json").write_text("{}")
    (data / "merged.partial" / "escape").symlink_to(outside)
    fs.replace(data / "merged.partial", data / "merged")
    assert (data / "merged" / "config.json").is_file()
    assert fs.remove(data / "merged") and not (data / "merged").exists()
    assert (outside / "victim").read_text() == "keep"


def test_removing_partials_walks_without_entering_links(place):
    data, outside, fs = place
    (outside / "theirs.partial").write_text("keep")
    work = data / "exports" / "w"
    (work / "merged.partial" / "sub").mkdir(parents=True)
    (work / "a.gguf.partial").write_text("x")
    (work / "eval").mkdir()
    (work / "eval" / "l.kld.partial").symlink_to(outside / "victim")
    (data / "exports" / "elsewhere").symlink_to(outside)
    removed = fs.remove_named(data / "exports", ".partial")
    assert sorted(removed) == ["w/a.gguf.partial", "w/eval/l.kld.partial", "w/merged.partial"]
    assert (outside / "theirs.partial").read_text() == "keep" and (outside / "victim").read_text() == "keep"


def test_a_fifo_or_a_path_outside_is_refused(place):
    data, _, fs = place
    os.mkfifo(data / "lock")
    with pytest.raises(UnsafePath, match="lock is not a regular file"):
        fs.open_fd(data / "lock", os.O_WRONLY)  # would block forever on a plain open
    with pytest.raises(ValueError):
        fs.write_text(data.parent / "x", "x")
    with pytest.raises(ValueError):
        fs.write_text(data / "a" / ".." / ".." / "x", "x")


def test_sqlite_refuses_a_linked_database_and_makes_nothing_at_its_target(place):
    data, outside, fs = place
    db = fs.sqlite(data / "tunedeck.db")
    db.execute("CREATE TABLE t (x)")
    db.commit()
    db.close()
    (data / "other.db").symlink_to(outside / "made.db")
    with pytest.raises(UnsafePath, match=f"other.db {SENTENCE}"):
        fs.sqlite(data / "other.db")
    assert not (outside / "made.db").exists()
    from app.export.history import History

    (data / "tunedeck.db").unlink()
    (data / "tunedeck.db").symlink_to(outside / "history.db")
    with pytest.raises(UnsafePath, match=f"tunedeck.db {SENTENCE}"):
        History(data / "tunedeck.db", data)
    assert not (outside / "history.db").exists()


def test_gguf_edits_go_through_the_guarded_folder(place):
    from app.gguf import set_bool

    data, outside, fs = place
    (outside / "victim").write_bytes(b"GGUF" + bytes(20))
    (data / "m.gguf.partial").symlink_to(outside / "victim")
    with pytest.raises(UnsafePath):
        set_bool(data / "m.gguf.partial", "tokenizer.ggml.add_bos_token", False, fs=fs)
    assert (outside / "victim").read_bytes() == b"GGUF" + bytes(20)


def test_data_init_hands_over_what_the_app_writes_and_follows_no_link(place):
    from app.data_init import prepare

    if os.getuid() != 0:
        pytest.skip("changing owners needs root (the data-init service runs as root)")
    data, outside, _ = place
    (data / "exports" / "old" / "merged").mkdir(parents=True)
    (data / "exports" / "old" / "merged" / "config.json").write_text("{}")
    (data / "exports" / "old" / "escape").symlink_to(outside)
    (data / "tunedeck-login").symlink_to(outside / "victim")
    (data / "saves" / "run").mkdir(parents=True)
    changed = prepare(data, data / "data", 10001, 10001)
    assert changed == [".", "tunedeck-login", "exports", "training", "saves", "data"]
    for p in (data, data / "exports", data / "data", data / "exports" / "old" / "merged" / "config.json"):
        assert (p.stat().st_uid, p.stat().st_gid) == (10001, 10001), p
    for p in (data / "exports" / "old" / "escape", data / "tunedeck-login"):
        assert os.lstat(p).st_uid == 10001  # the link itself
    assert (outside.stat().st_uid, (outside / "victim").stat().st_uid) == (0, 0)  # never its target
    assert (data / "saves").stat().st_uid == 10001  # the queue makes new run folders there
    assert (data / "saves" / "run").stat().st_uid == 0  # the runs keep their writers' owner


def test_a_job_started_for_a_client_that_left_is_cancelled_at_once():
    """The client goes away while the job is being started (between the click and the first update):
    the job it started is cancelled the moment it exists."""
    from app.ui.export_tab import start_unorphaned

    started, release, cancelled = threading.Event(), threading.Event(), []

    class Job:
        id = "j1"

    def start() -> Job:
        started.set()
        release.wait(10)  # SQLite, the lock: a start takes a moment; it ends only once the client has left
        return Job()

    async def client_leaves() -> None:
        task = asyncio.ensure_future(start_unorphaned(start, cancelled.append))
        while not started.is_set():
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert cancelled == []  # not yet: the job does not exist yet
        release.set()
        for _ in range(1000):
            if cancelled:
                break
            await asyncio.sleep(0.01)

    # a thread of its own: a browser test earlier in the session leaves Playwright's loop running in this one
    failures: list = []
    runner = threading.Thread(target=lambda: _run_collecting(client_leaves, failures))
    runner.start()
    runner.join(30)
    assert not failures, failures
    assert cancelled == ["j1"]


def _run_collecting(coroutine_fn, failures: list) -> None:
    try:
        asyncio.run(coroutine_fn())
    except BaseException as exc:  # noqa: BLE001 - handed to the test's thread, which asserts on it
        failures.append(exc)
