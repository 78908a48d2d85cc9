"""The evaluated run to a local stand-in for the Hub's HTTP API: model, LoRA, card, samples, numbers, private; a
failure halfway reported as such (and not recorded as done), then the same upload resuming; a read-only token;
a repo that holds another run's files refused unless overwrite; the token never printed."""

from __future__ import annotations

import hashlib
import json

import pytest

from helpers.evaluation import EvaluationError, evaluate_run, upload_evaluated
from helpers.evaluation.demo import demo_settings
from helpers.hub.upload import HubUploadError
from tests.hub_standin import READER, TOKEN, Repo
from tests.test_evaluation_run import copy_demo


@pytest.fixture(scope="module")
def evaluated_ws(demo_workspace, tmp_path_factory):
    ws = copy_demo(demo_workspace, tmp_path_factory.mktemp("upload") / "ws")
    settings = demo_settings(ws, checkpoints=["epoch 2"], strengths=[0.0, 1.0], prompt_sets=["new", "trigger"],
                             preservation_prompts=0, images_per_prompt=1)
    evaluate_run(ws, "demo", settings, progress=False, echo=lambda _m: None)
    return ws


def uploads(ws) -> list:
    path = ws.run("demo").uploads
    return json.loads(path.read_text())["uploads"] if path.is_file() else []


def sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_evaluated_run_goes_to_a_private_repo_with_its_card(hub, evaluated_ws, capsys):
    ws = evaluated_ws
    done = upload_evaluated(ws, "demo", "demo-model", token=TOKEN, endpoint=hub.url, echo=lambda _m: None)
    repo = hub.repos["me/demo-model"]
    assert repo.private and done.private
    names = set(repo.files)
    assert {"README.md", "evaluation/metrics.json", "tunebook.json", "demo.safetensors",
            "loras/demo-e0002.safetensors"} <= names
    samples = [n for n in names if n.startswith("samples/")]
    assert samples and all(f"]({s})" in repo.files["README.md"].decode() for s in samples)
    assert repo.files["demo.safetensors"] == (ws.run("demo").checkpoints / "demo.safetensors").read_bytes()
    assert json.loads(repo.files["tunebook.json"])["run"] == "demo"
    assert uploads(ws)[-1]["where"].endswith("/me/demo-model")
    again = upload_evaluated(ws, "demo", "me/demo-model", token=TOKEN, endpoint=hub.url, echo=lambda _m: None)
    assert not again.uploaded and len(again.skipped) == len(names)  # the same run again: nothing sent twice
    output = capsys.readouterr()
    assert TOKEN not in output.out + output.err


def test_a_failure_halfway_is_not_reported_as_done_and_the_same_upload_resumes(hub, evaluated_ws):
    ws = evaluated_ws
    before = len(uploads(ws))
    lora = ws.exports / "demo-e0002.safetensors"
    model = ws.run("demo").checkpoints / "demo.safetensors"
    hub.fail_puts.add(sha(lora))  # the LoRA's upload URL has expired
    with pytest.raises(HubUploadError) as failed:
        upload_evaluated(ws, "demo", "resume-me", token=TOKEN, endpoint=hub.url, echo=lambda _m: None)
    message = str(failed.value)
    assert "upload stopped at loras/demo-e0002.safetensors" in message and "run the same upload again" in message
    assert TOKEN not in message
    there = set(hub.repos["me/resume-me"].files)
    assert "demo.safetensors" in there and "tunebook.json" not in there and "loras/demo-e0002.safetensors" not in there
    assert len(uploads(ws)) == before  # nothing recorded as uploaded
    upload_evaluated(ws, "demo", "resume-me", token=TOKEN, endpoint=hub.url, echo=lambda _m: None)
    assert {"tunebook.json", "loras/demo-e0002.safetensors"} <= set(hub.repos["me/resume-me"].files)
    assert hub.puts.count(sha(model)) == 1  # the model that landed was not sent again
    assert len(uploads(ws)) == before + 1


def test_a_read_only_token_is_refused_before_a_byte_is_sent(hub, evaluated_ws):
    with pytest.raises(HubUploadError, match="this token can only read"):
        upload_evaluated(evaluated_ws, "demo", "demo-model", token=READER, endpoint=hub.url, echo=lambda _m: None)
    assert not hub.repos and not hub.puts


def test_a_repo_that_holds_another_run_is_refused_unless_overwrite(hub, evaluated_ws):
    hub.repos["me/taken"] = Repo("me", True, {"tunebook.json": b'{"run": "portraits", "tool": "tunebook"}',
                                              "portraits.safetensors": b"P" * 10})
    hub.repos["me/not-tunebook"] = Repo("me", True, {"model.ckpt": b"C" * 10})
    with pytest.raises(EvaluationError, match="me/taken already holds run 'portraits'.*overwrite=True"):
        upload_evaluated(evaluated_ws, "demo", "taken", token=TOKEN, endpoint=hub.url, echo=lambda _m: None)
    with pytest.raises(EvaluationError, match=r"me/not-tunebook already holds other files \(model.ckpt\)"):
        upload_evaluated(evaluated_ws, "demo", "not-tunebook", token=TOKEN, endpoint=hub.url, echo=lambda _m: None)
    assert hub.repos["me/taken"].commits == 0 and not hub.puts
    upload_evaluated(evaluated_ws, "demo", "taken", token=TOKEN, endpoint=hub.url, overwrite=True, echo=lambda _m: None)
    assert json.loads(hub.repos["me/taken"].files["tunebook.json"])["run"] == "demo"
