"""One table of training settings: the checks, the command line's options and the Train page's
widgets are made from it, so every setting is offered everywhere with the same range."""

from __future__ import annotations

import math

import pytest

from app import cli
from app.core.base.errors import SettingsError
from app.core.training.settings import TrainSettings, table


def _other(default, kind, spec):
    """A valid value other than the default."""
    if spec.choices:
        return next(c for c in spec.choices if c != default)
    lo, hi = spec.range
    return kind(hi) if default != hi else kind(lo)


def test_every_setting_is_a_command_line_option_with_its_checks():
    shown = [(n, d, k, s) for n, d, k, s in table() if s.shown]
    assert {n for n, *_ in shown} >= {"epochs", "warmup_epochs", "augment", "answer", "mode"}
    args = ["train", "DATA", "--out", "OUT"]
    want = {}
    for name, default, kind, spec in shown:
        value = _other(default, kind, spec)
        if name == "warmup_epochs":
            value = 3
        want[name] = value
        args += [spec.cli or f"--{name.replace('_', '-')}", str(value)]
    parsed = cli.build_parser().parse_args(args)
    settings = cli._settings(parsed)
    assert {n: getattr(settings, n) for n in want} == want


@pytest.mark.parametrize("name", [n for n, _d, _k, s in table() if s.range])
def test_every_range_is_checked_at_both_ends_and_refuses_nan(name):
    spec = dict((n, s) for n, _d, _k, s in table())[name]
    lo, hi = spec.range
    kind = int if isinstance(lo, int) and isinstance(hi, int) else float
    for bad in (lo - 1, hi + 1) + (() if kind is int else (math.nan, math.inf)):
        with pytest.raises(SettingsError, match=name.replace("_", " ")):
            TrainSettings(**{name: kind(bad) if kind is int else bad})
    TrainSettings(**{name: kind(lo)}) if name != "epochs" else TrainSettings(epochs=1)


def test_a_choice_outside_the_table_is_refused_naming_the_choices():
    with pytest.raises(SettingsError, match="choose adam or sgd or rmsprop"):
        TrainSettings(optimizer="adamw")


def test_options_not_given_take_the_tasks_defaults_and_given_ones_win():
    parse = cli.build_parser().parse_args
    assert cli._settings(parse(["train", "D", "--out", "O"])) == TrainSettings()
    multi = cli._settings(parse(["train", "D", "--out", "O", "--multi-label"]), True)
    assert (multi.hidden_units, multi.answer) == (1024, "main")
    assert multi == TrainSettings(hidden_units=1024, answer="main")
    given = cli._settings(parse(["train", "D", "--out", "O", "--hidden-units", "0",
                                 "--answer", "average"]), True)
    assert (given.hidden_units, given.answer) == (0, "average")


def test_the_training_batch_and_the_backbone_batch_are_two_options():
    """They once shared one name: the training batch came out as the backbone's 32 and
    --train-batch-size changed the backbone's batch too."""
    parsed = cli.build_parser().parse_args(["train", "D", "--out", "O", "--batch-size", "16",
                                            "--train-batch-size", "128"])
    assert parsed.batch_size == 16 and cli._settings(parsed).batch_size == 128
    assert cli._settings(cli.build_parser().parse_args(["train", "D", "--out", "O"])) \
        .batch_size == TrainSettings().batch_size == 64
