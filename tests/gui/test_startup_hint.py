"""A missing X11 library is named with its package, in one line, before Qt can abort."""

from __future__ import annotations

import ctypes

from app.gui import main


def test_a_missing_xcb_library_is_named_with_its_package(monkeypatch, capsys):
    real = ctypes.CDLL

    def cdll(name, *args, **kwargs):
        if name == "libxcb-cursor.so.0":
            raise OSError(f"{name}: cannot open shared object file")
        return real("libc.so.6")

    monkeypatch.setattr(ctypes, "CDLL", cdll)
    monkeypatch.setattr(main.sys, "platform", "linux")
    assert main.missing_x11_libraries("xcb") == ["libxcb-cursor0"]
    assert main.missing_x11_libraries("offscreen") == []  # not needed there
    monkeypatch.setenv("QT_QPA_PLATFORM", "xcb")
    assert main.run_gui() == 2
    err = capsys.readouterr().err
    assert "libxcb-cursor0" in err and "apt-get install" in err and err.count("\n") == 1
