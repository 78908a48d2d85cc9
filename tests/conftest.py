"""Shared fixtures: tiny offline models on disk (built once per session), a fresh workspace per test."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    import torch

    torch.set_num_threads(1)  # faster than 2 for tiny models on this machine, and deterministic
    yield


@pytest.fixture(scope="session")
def tiny_sdxl_dir(tmp_path_factory):
    """A tiny random SDXL pipeline saved as a diffusers folder (read-only: copy before changing)."""
    from helpers.models.tiny import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-sdxl", "sdxl")


@pytest.fixture(scope="session")
def tiny_sd15_dir(tmp_path_factory):
    """A tiny random SD 1.5 (epsilon) pipeline saved as a diffusers folder."""
    from helpers.models.tiny import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-sd15", "sd15")


@pytest.fixture(scope="session")
def tiny_sd15_v_dir(tmp_path_factory):
    """A tiny random SD 1.5 v-prediction pipeline saved as a diffusers folder."""
    from helpers.models.tiny import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-sd15-v", "sd15", prediction="v_prediction")


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    """An empty workspace in a temp folder, also exported as TUNEBOOK_WORKSPACE."""
    from helpers.workspace import Workspace

    monkeypatch.setenv("TUNEBOOK_WORKSPACE", str(tmp_path / "ws"))
    return Workspace.open(tmp_path / "ws")


@pytest.fixture(scope="session")
def demo_workspace(tmp_path_factory):
    """The workspace ``python -m helpers demo`` makes (every stage run once); shared, so treat it as read-only
    unless a test adds its own uniquely named run/dataset."""
    from helpers.demo import run_demo

    root = tmp_path_factory.mktemp("demo") / "ws"
    run_demo(root, echo=lambda *_: None)
    return root


@pytest.fixture
def hub(monkeypatch):
    """A local stand-in for the Hub's HTTP API (tests/hub_standin.py) that the upload code talks to; tokens
    ``hub_standin.TOKEN`` (write, orgs: myorg) and ``hub_standin.READER`` (read only)."""
    import huggingface_hub.constants as hf_constants

    from tests.hub_standin import READER, TOKEN, HubStandIn

    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf_constants, "HF_HUB_DISABLE_XET", True)  # the stand-in speaks LFS, not Xet
    monkeypatch.setattr("helpers.hub.upload.LARGE_BYTES", 1000)  # the stand-in's LFS threshold (the Hub's: 10 MB)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    with HubStandIn({TOKEN: ("me", "write", ["myorg"]), READER: ("me", "read", [])}) as standin:
        yield standin
