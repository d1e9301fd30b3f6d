"""`steer view DIR`: opens the run's report.html in the default browser and prints its path."""

from __future__ import annotations

import webbrowser

from steer_plugin.cli import main


def test_view_opens_the_report_and_prints_its_path(tmp_path, monkeypatch, capsys):
    opened: list[str] = []
    monkeypatch.setattr(webbrowser, "open", lambda url: opened.append(url) or False)  # no browser here: False
    (tmp_path / "report.html").write_text("<!DOCTYPE html><title>r</title>")
    assert main(["view", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip() == str((tmp_path / "report.html").resolve())
    assert opened == [(tmp_path / "report.html").resolve().as_uri()]


def test_view_without_a_report_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(webbrowser, "open", lambda url: (_ for _ in ()).throw(AssertionError(url)))
    assert main(["view", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no report.html in" in err and "steer report" in err
