"""`bottleneck-studio --self-test`: passes from source, and a failing step exits non-zero."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _self_test(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != "BOTTLENECK_STUDIO_SELFTEST_FAIL"}
    environ.update(QT_QPA_PLATFORM="offscreen", TF_CPP_MIN_LOG_LEVEL="2", HOME=str(tmp_path),
                   BOTTLENECK_STUDIO_CACHE=str(tmp_path / "user-cache"), **env)
    return subprocess.run([sys.executable, "-m", "app", "--self-test"], cwd=ROOT, env=environ,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_self_test_passes(tmp_path):
    proc = _self_test(tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert any(line.startswith("self-test passed") for line in lines), proc.stdout
    for step in ("data ok", "cache ok (24 images", "train ok", "export ok", "predict ok"):
        assert any(step in line for line in lines), f"no '{step}' line in:\n{proc.stdout}"
    # it works in a temp folder: the user's cache stays untouched
    assert not (tmp_path / "user-cache").exists()


@pytest.mark.slow
def test_failing_step_exits_nonzero_with_reason(tmp_path):
    proc = _self_test(tmp_path, BOTTLENECK_STUDIO_SELFTEST_FAIL="cache")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "self-test FAILED:" in proc.stdout and "cache step failed" in proc.stdout
    assert "self-test passed" not in proc.stdout


def test_run_self_test_reports_exceptions(monkeypatch, capsys, tmp_path):
    from app import selftest

    monkeypatch.setenv("BOTTLENECK_STUDIO_SELFTEST_FAIL", "data")
    assert selftest.run_self_test() == 1
    out = capsys.readouterr().out
    assert "self-test FAILED: SelfTestError: data step failed on purpose" in out


def test_a_damaged_bundled_weights_file_fails_the_self_test(tmp_path, monkeypatch):
    """The installer's bundled weights (the backbone proposed offline) are loaded by the
    self-test: a damaged file fails it with a reason, and none bundled is said."""
    import app.core.features.weights as weights
    from app import selftest

    monkeypatch.setattr(weights, "resources_dir", lambda: tmp_path / "resources")
    assert "none" in selftest._check_bundled_weights()
    folder = tmp_path / "resources" / "weights" / "mobilenet_v2"
    folder.mkdir(parents=True)
    (folder / "damaged.weights.h5").write_bytes(b"not weights")
    with pytest.raises(Exception, match="damaged.weights.h5|signature|open"):
        selftest._check_bundled_weights()
