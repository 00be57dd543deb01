"""Real subprocesses: kill -9 in the middle of caching, and two processes at once."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from tests.conftest import make_dataset

pytestmark = pytest.mark.slow
N_PER_CLASS = 40  # 120 images: a few seconds of MobileNet on the CPU


def _cmd(data, cache, *extra):
    return [sys.executable, "-m", "app", "cache", str(data), "--backbone", "mobilenet",
            "--weights", "none", "--cache-dir", str(cache), "--batch-size", "8", "--json", *extra]


def _rows(cache) -> int:
    db = cache / "features.sqlite3"
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(db, timeout=5) as con:
            return con.execute("SELECT count(*) FROM features").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def test_kill_9_mid_run_then_resume_loses_at_most_the_batch_in_flight(tmp_path):
    data = make_dataset(tmp_path / "d", per_class=N_PER_CLASS)
    cache = tmp_path / "cache"
    proc = subprocess.Popen(_cmd(data, cache), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while _rows(cache) < 16 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = _rows(cache)
    assert 0 < before < 3 * N_PER_CLASS, "the kill came too late to test anything"
    out = subprocess.run(_cmd(data, cache), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["images"] == 3 * N_PER_CLASS
    assert result["reused"] >= before and result["computed"] + result["reused"] == result["images"]
    with sqlite3.connect(cache / "features.sqlite3") as con:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_two_processes_share_the_work_without_corruption(tmp_path):
    data = make_dataset(tmp_path / "d", per_class=N_PER_CLASS)
    cache = tmp_path / "cache"
    procs = [subprocess.Popen(_cmd(data, cache), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    results = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=300)
        assert p.returncode == 0, stderr
        results.append(json.loads(stdout))
    total = 3 * N_PER_CLASS
    assert all(r["images"] == total for r in results)
    # both did share the work, and no image was computed twice
    assert all(r["computed"] > 0 for r in results), [r["computed"] for r in results]
    assert sum(r["computed"] for r in results) == total
    assert _rows(cache) == total
    with sqlite3.connect(cache / "features.sqlite3") as con:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert con.execute("SELECT count(*) FROM claims").fetchone()[0] == 0


def test_cli_reports_bad_files_without_failing_and_unusable_data_exits_2(tmp_path):
    data = make_dataset(tmp_path / "d", per_class=3)
    (data / "red" / "fake.jpg").write_text("text")
    cmd = _cmd(data, tmp_path / "c")
    cmd[cmd.index("mobilenet")] = "tiny"
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert [s["path"].rsplit("/", 1)[1] for s in doc["skipped"]] == ["fake.jpg"]
    for key in ("images", "computed", "reused", "skipped", "classes", "split", "seconds",
                "images_per_second", "device"):
        assert key in doc
    lone = tmp_path / "lone"
    (lone / "one").mkdir(parents=True)
    bad = subprocess.run(cmd[:4] + [str(lone)] + cmd[5:], capture_output=True, text=True,
                         timeout=300)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1].startswith("error: no usable images")


def test_help_lists_every_command():
    out = subprocess.run([sys.executable, "-m", "app", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for command in ("cache", "gui"):
        assert command in out.stdout


def test_warm_run_never_imports_tensorflow(tmp_path):
    data = make_dataset(tmp_path / "d", per_class=3)
    cmd = _cmd(data, tmp_path / "c")
    cmd[cmd.index("mobilenet")] = "tiny"
    assert subprocess.run(cmd, capture_output=True, timeout=300).returncode == 0
    script = (
        "import sys, json\n"
        "from app.core.features.caching import cache_features\n"
        f"r = cache_features({str(data)!r}, 'tiny', 'none', {str(tmp_path / 'c')!r})\n"
        "print(json.dumps([r.computed, r.reused, 'tensorflow' in sys.modules,"
        " 'keras' in sys.modules]))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120)
    assert json.loads(out.stdout) == [0, 9, False, False]
