"""The Ray token for a cluster is found where Ray looks (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH,
~/.ray/auth_token) and turns token authentication on for a remote address only, unless the
environment says otherwise; with none, the message says where to put it. No Ray needed."""

from __future__ import annotations

import os
from pathlib import Path

from app.core.features.engines.ray import TOKEN_HELP, ray_token, use_token_for


def test_the_token_is_found_where_ray_looks_and_used_for_a_cluster_only(monkeypatch,
                                                                         tmp_path):
    for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(name, raising=False)
    assert ray_token() is None
    assert use_token_for("head:6379") is None and "RAY_AUTH_MODE" not in os.environ
    assert "~/.ray/auth_token" in TOKEN_HELP

    default = Path.home() / ".ray" / "auth_token"
    default.parent.mkdir(parents=True, exist_ok=True)
    default.write_text("")  # empty: not a token
    assert ray_token() is None
    default.write_text("s3cret\n")
    assert ray_token() == str(default)
    assert use_token_for(None) is None and "RAY_AUTH_MODE" not in os.environ
    assert use_token_for("head:6379") == str(default)
    assert os.environ["RAY_AUTH_MODE"] == "token"

    named = tmp_path / "cluster-token"
    named.write_text("other")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(named))
    assert ray_token() == str(named)
    monkeypatch.setenv("RAY_AUTH_TOKEN", "inline")
    assert ray_token() == "RAY_AUTH_TOKEN"

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # the user's own setting stays
    use_token_for("head:6379")
    assert os.environ["RAY_AUTH_MODE"] == "disabled"
