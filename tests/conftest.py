"""Shared fixtures: headless Qt, a private cache/settings home, small generated datasets."""

from __future__ import annotations

import os
import zlib

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

COLOURS = {"red": (200, 40, 40), "green": (40, 190, 60), "blue": (40, 60, 200)}


@pytest.fixture(autouse=True)
def private_home(tmp_path_factory, monkeypatch):
    """Keep every test off the user's real cache, data and settings folders."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("BOTTLENECK_STUDIO_CACHE", str(home / "cache"))
    monkeypatch.setenv("BOTTLENECK_STUDIO_DATA", str(home / "data"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / "config"))
    monkeypatch.setenv("HOME", str(home))
    return home


def make_image(path: Path, colour, size=(96, 72), seed=0, fmt=None, noise=30.0) -> Path:
    """A noisy image of one dominant colour: easy for even a random backbone to separate."""
    rng = np.random.default_rng(seed)
    arr = np.clip(np.array(colour) + rng.normal(0, noise, (size[1], size[0], 3)), 0, 255)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr.astype(np.uint8)).save(path, format=fmt)
    return path


def make_dataset(root: Path, per_class: int = 12, classes=("red", "green", "blue"),
                 fmt_cycle=("jpg", "png")) -> Path:
    for c in classes:
        for i in range(per_class):
            ext = fmt_cycle[i % len(fmt_cycle)]
            make_image(root / c / f"{c}_{i:03d}.{ext}", COLOURS[c],
                       seed=zlib.crc32(f"{c}{i}".encode()))
    return root


@pytest.fixture
def dataset_dir(tmp_path) -> Path:
    return make_dataset(tmp_path / "photos")


@pytest.fixture
def cache_dir(tmp_path) -> Path:
    return tmp_path / "cache"


def killed_after_journal(data: Path, move) -> None:
    """What a writer killed (kill -9) after journaling ``move`` (a journal Move: source,
    target, op, digest) and before changing any file leaves: the signed line, and the lock
    file naming its operation as the work in progress."""
    from app.core.intake import journal

    root = Path(data).resolve()
    operation = journal.new_id()
    item = journal.Move(move.source, move.target, journal.new_id(), move.op, move.digest,
                        operation)
    journal.write_items(root, operation, "label", "killed", [item])
    (root / journal.LOCK).write_text(f"file {operation}")
