"""Colab support without Colab: detection, the custom widget manager switch, Drive hints (no browser needed)."""

from __future__ import annotations

import sys
import types

import pytest

from helpers.ui import colab


@pytest.fixture
def fake_colab(monkeypatch):
    """A stand-in google.colab package recording the widget-manager call, as Colab's kernel has it loaded."""
    calls = []
    google = types.ModuleType("google")
    google.__path__ = []
    pkg = types.ModuleType("google.colab")
    pkg.__path__ = []
    output = types.ModuleType("google.colab.output")
    output.enable_custom_widget_manager = lambda: calls.append("enabled")
    pkg.output = output
    monkeypatch.setitem(sys.modules, "google", google)
    monkeypatch.setitem(sys.modules, "google.colab", pkg)
    monkeypatch.setitem(sys.modules, "google.colab.output", output)
    monkeypatch.setattr(colab, "_enabled", False)
    return calls


def test_not_colab_here(monkeypatch):
    monkeypatch.setattr(colab, "_enabled", False)
    assert not colab.is_colab(env={}, modules={})
    assert colab.enable_colab_widgets(env={}) is False
    assert colab.drive_hint("/somewhere", env={}) == ""


def test_colab_variable_without_the_package_is_not_colab():
    assert not colab.is_colab(env={"COLAB_RELEASE_TAG": "x"}, modules={})


def test_widget_manager_enabled_once(fake_colab):
    assert colab.is_colab()
    assert colab.enable_colab_widgets() and colab.enable_colab_widgets()
    assert fake_colab == ["enabled"]


def test_config_form_enables_it_on_colab(fake_colab):
    from helpers.environment import SetupConfig
    from helpers.ui.forms import config_form

    config_form(SetupConfig)
    assert fake_colab == ["enabled"]


def test_drive_hints(fake_colab, tmp_path):
    mount = tmp_path / "drive"
    assert "not mounted" in colab.drive_hint(None, mount=mount)
    (mount / "MyDrive").mkdir(parents=True)
    assert "wipes" in colab.drive_hint("/content/tunebook", mount=mount)
    assert "survives" in colab.drive_hint(mount / "MyDrive" / "tunebook", mount=mount)
