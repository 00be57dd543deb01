"""The command line never destroys a user's folder, never exports a cancelled run and never
prints figures for work it did not finish."""

import json
import os
import signal
import subprocess
import sys

import pytest

import app.cli as cli
from tests.conftest import make_dataset, make_image

pytestmark = pytest.mark.slow
TINY = ["--backbone", "tiny", "--weights", "none"]


def _app(*args):
    return [sys.executable, "-m", "app", *map(str, args)]


def test_out_pointing_at_a_users_folder_touches_nothing(tmp_path):
    data = make_dataset(tmp_path / "d", per_class=4)
    documents = tmp_path / "Documents"
    (documents / "taxes").mkdir(parents=True)
    (documents / "letter.txt").write_text("dear user")
    (documents / "taxes" / "2026.pdf").write_bytes(b"%PDF-1.7")
    before = sorted(p.relative_to(documents) for p in documents.rglob("*"))
    out = subprocess.run(_app("train", data, "--out", documents, *TINY, "--cache-dir",
                              tmp_path / "c", "--epochs", "1"),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and "not a model folder" in last and "nothing" in last
    assert sorted(p.relative_to(documents) for p in documents.rglob("*")) == before
    assert (documents / "letter.txt").read_text() == "dear user"
    assert not list(tmp_path.glob(".Documents*"))


def test_ctrl_c_during_training_keeps_the_existing_model(tmp_path):
    data = make_dataset(tmp_path / "d", per_class=8)
    model = tmp_path / "model"
    common = [*TINY, "--cache-dir", tmp_path / "c", "--train-batch-size", "2"]
    first = subprocess.run(_app("train", data, "--out", model, *common, "--epochs", "1"),
                           capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    good = {p.name: p.read_bytes() for p in model.iterdir() if p.is_file()}

    proc = subprocess.Popen(_app("train", data, "--out", model, *common, "--epochs", "500",
                                 "--early-stopping", "0"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    for line in proc.stderr:  # the first finished epoch, then Ctrl+C
        lines.append(line)
        if line.startswith("Epoch 1 of "):
            proc.send_signal(signal.SIGINT)
            break
    rest, more = proc.communicate(timeout=300)
    err = "".join(lines) + more
    assert proc.returncode == 1, err
    assert "not exported" in err and "left as it was" in err
    assert rest == ""  # no figures on stdout
    assert {p.name: p.read_bytes() for p in model.iterdir() if p.is_file()} == good
    assert not list(tmp_path.glob(".model*"))


def _main_with_ctrl_c_at(stage, argv, monkeypatch, capfd):
    """Run the CLI in this process; a real SIGINT arrives at the first progress of ``stage``."""
    real = cli.ProgressBar.__call__
    sent = []

    def call(self, p):
        if p.stage == stage and not sent:
            sent.append(p)
            os.kill(os.getpid(), signal.SIGINT)
        real(self, p)

    monkeypatch.setattr(cli.ProgressBar, "__call__", call)
    previous = signal.getsignal(signal.SIGINT)
    try:
        code = cli.main([str(a) for a in argv])
    finally:
        signal.signal(signal.SIGINT, previous)
    assert sent, f"no {stage} progress was reported"
    return code, capfd.readouterr()


def test_ctrl_c_while_reading_the_folder_prints_one_line(tmp_path, monkeypatch, capfd):
    for i in range(140):  # the scan reports every 64 files
        make_image(tmp_path / "d" / ("a" if i % 2 else "b") / f"{i}.png", (i, 0, 0), size=(8, 8))
    code, out = _main_with_ctrl_c_at(
        "scan", ["cache", tmp_path / "d", *TINY, "--cache-dir", tmp_path / "c"],
        monkeypatch, capfd)
    assert code == 1
    assert "Traceback" not in out.err
    assert out.err.strip().splitlines()[-1].startswith("cancelled")
    assert out.out == ""


def test_ctrl_c_during_evaluate_gives_no_figures(tmp_path, monkeypatch, capfd):
    data = make_dataset(tmp_path / "d", per_class=12)  # 36 images: two batches of 32
    model = tmp_path / "model"
    train = subprocess.run(_app("train", data, "--out", model, *TINY, "--cache-dir",
                                tmp_path / "c", "--epochs", "1"),
                           capture_output=True, text=True, timeout=300)
    assert train.returncode == 0, train.stderr
    code, out = _main_with_ctrl_c_at(
        "predict", ["evaluate", model, data, "--split", "all", "--json"], monkeypatch, capfd)
    assert code == 1
    assert out.out == ""  # no accuracy that counts unfinished images as class 0
    assert out.err.strip().splitlines()[-1].startswith("cancelled")


def test_stderr_holds_only_the_apps_own_lines(tmp_path):
    data = make_dataset(tmp_path / "d", per_class=3)
    out = subprocess.run(_app("cache", data, *TINY, "--cache-dir", tmp_path / "c", "--json"),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["device"] in ("CPU, ONNX Runtime", "CPU, Keras/TensorFlow")
    for noise in ("cuInit", "cudart_stub", "cuda_platform", "absl::InitializeLog"):
        assert noise not in out.stderr, out.stderr
