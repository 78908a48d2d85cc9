"""Results off the machine: a run uploaded to a local stand-in for the Hub's HTTP API (private, recorded, skipped
when already there), a failure halfway and the resume that sends only what is missing, the bad-input messages
(read-only token, someone else's repo, a public repo), the token never printed; and the archive with its sha256."""

from __future__ import annotations

import hashlib
import json
import zipfile

import pytest

from helpers import results
from helpers.hub.upload import HubUploadError, upload_files
from tests.hub_standin import READER, TOKEN, Repo


@pytest.fixture
def run(workspace):
    """A finished run: final model and its -noema twin (LFS-sized), config, log, summary, two samples, a LoRA."""
    r = workspace.run("r1").create()
    r.checkpoint().write_bytes(b"M" * 6000)
    r.checkpoint(noema=True).write_bytes(b"N" * 5000)
    r.config.write_text("epochs = 1\n")
    r.log.write_text('{"step": 1}\n')
    r.summary.write_text("{}")
    (r.samples / "s1.png").write_bytes(b"png1")
    (r.samples / "s2.png").write_bytes(b"png2")
    (workspace.exports / "r1-r1-lora-r16.safetensors").write_bytes(b"L" * 3000)
    (workspace.exports / "other-lora.safetensors").write_bytes(b"O")  # another run's: not included
    return r


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_a_run_goes_to_a_private_repo_once(hub, workspace, run, capsys):
    done = results.upload_run(workspace, run, "r1-model", token=TOKEN, endpoint=hub.url)
    repo = hub.repos["me/r1-model"]
    assert repo.private and done.private and done.repo_id == "me/r1-model"
    assert set(repo.files) == {"r1.safetensors", "r1-noema.safetensors", "loras/r1-r1-lora-r16.safetensors",
                               "config.toml", "log.jsonl", "summary.json", "samples/s1.png", "samples/s2.png"}
    assert repo.files["r1.safetensors"] == b"M" * 6000 and "r1.safetensors" in repo.lfs
    assert repo.commits == 4  # three large files one each, the small ones together
    assert any("r1: final model on the Hub" in line for line in results.remind(workspace, echo=lambda _: None))
    again = results.upload_run(workspace, run, "me/r1-model", token=TOKEN, endpoint=hub.url)
    assert not again.uploaded and len(again.skipped) == 8 and repo.commits == 4  # nothing sent twice
    output = capsys.readouterr()
    assert TOKEN not in output.out + output.err and any(TOKEN in a for a in hub.seen_auth)  # used, never shown


def test_a_failure_halfway_says_so_and_the_same_upload_resumes(hub, workspace, run):
    hub.fail_puts.add(sha(b"N" * 5000))  # the second large file's upload URL has expired
    with pytest.raises(HubUploadError) as failed:
        results.upload_run(workspace, run, "r1-model", token=TOKEN, endpoint=hub.url)
    message = str(failed.value)
    assert "upload stopped at r1-noema.safetensors" in message and "1 of 8 file(s) are on the Hub" in message
    assert "run the same upload again" in message and TOKEN not in message
    assert set(hub.repos["me/r1-model"].files) == {"r1.safetensors"}
    results.upload_run(workspace, run, "r1-model", token=TOKEN, endpoint=hub.url)
    assert len(hub.repos["me/r1-model"].files) == 8
    assert hub.puts.count(sha(b"M" * 6000)) == 1  # the file that landed was not sent again


def test_a_commit_that_fails_after_the_bytes_landed_does_not_send_them_twice(hub, workspace, run):
    hub.fail_commits.add("loras/r1-r1-lora-r16.safetensors")
    with pytest.raises(HubUploadError, match="the Hub answered 500"):
        results.upload_run(workspace, run, "r1-model", token=TOKEN, endpoint=hub.url)
    results.upload_run(workspace, run, "r1-model", token=TOKEN, endpoint=hub.url)
    assert hub.puts.count(sha(b"L" * 3000)) == 1 and len(hub.repos["me/r1-model"].files) == 8


def test_bad_tokens_and_repos_are_refused_before_anything_is_sent(hub, workspace, run):
    files = results.run_files(workspace, run)
    with pytest.raises(HubUploadError, match="can only read.*'write' token"):
        upload_files(files, "me/x", token=READER, endpoint=hub.url)
    with pytest.raises(HubUploadError, match="belongs to 'someone'.*upload to me/x instead"):
        upload_files(files, "someone/x", token=TOKEN, endpoint=hub.url)
    with pytest.raises(HubUploadError, match="refused the token"):
        upload_files(files, "me/x", token="hf_revokedTOKEN123456", endpoint=hub.url)
    assert not hub.repos and not hub.puts
    upload_files(files, "myorg/x", token=TOKEN, endpoint=hub.url)  # an organisation the user is in
    hub.repos["me/public"] = Repo("me", private=False)
    with pytest.raises(HubUploadError, match="already exists and is public"):
        upload_files(files, "me/public", token=TOKEN, endpoint=hub.url)
    assert upload_files(files, "me/public", token=TOKEN, endpoint=hub.url, private=False).uploaded


def test_the_command_line_uploads_a_run_and_says_why_it_cannot(hub, workspace, run, monkeypatch, capsys):
    from helpers.hub.__main__ import main

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    args = ["--workspace", str(workspace.root), "upload", "r1", "--repo", "cli", "--endpoint", hub.url,
            "--include", "final,config"]
    assert main(args) == 0 and set(hub.repos["me/cli"].files) == {"r1.safetensors", "r1-noema.safetensors",
                                                                   "config.toml"}
    assert main([*args[:-4], "--repo", "someone/else", "--endpoint", hub.url]) == 2
    out = capsys.readouterr()
    assert "belongs to 'someone'" in out.err and TOKEN not in out.out + out.err
    uploads = json.loads(run.uploads.read_text())["uploads"]
    assert uploads[-1]["where"].endswith("/me/cli") and "r1.safetensors" in uploads[-1]["files"]


def test_pack_writes_one_archive_with_its_size_and_sha256(workspace, run, monkeypatch):
    packed = results.pack_run(workspace, run, ["final", "loras", "config"], progress=False)
    path = workspace.exports / "r1-results.zip"
    assert packed["path"] == str(path) and packed["bytes"] == path.stat().st_size and packed["files"] == 4
    assert packed["sha256"] == sha(path.read_bytes())
    assert (workspace.exports / "r1-results.zip.sha256").read_text() == f"{packed['sha256']}  r1-results.zip\n"
    with zipfile.ZipFile(path) as archive:
        assert archive.read("r1.safetensors") == b"M" * 6000 and "loras/r1-r1-lora-r16.safetensors" in archive.namelist()
    assert not list(workspace.exports.glob(".*.part"))
    assert any("packed in exports/r1-results.zip" in line for line in results.remind(workspace, echo=lambda _: None))
    import shutil

    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9, 100))
    with pytest.raises(results.ResultsError, match="upload to the Hub instead"):
        results.pack_run(workspace, run, progress=False)


def test_a_run_with_nothing_yet_and_a_fresh_workspace_remind_plainly(workspace):
    run = workspace.run("empty").create()
    with pytest.raises(results.ResultsError, match="nothing to upload"):
        results.upload_run(workspace, run, "x", include=["final"], token=TOKEN)
    workspace.run("done").create().checkpoint().write_bytes(b"x")
    lines = results.remind(workspace, echo=lambda _: None)
    assert lines[0] == results.DESTROY_WARNING and "done: final model NOT off this machine yet" in lines[1]


def test_an_upload_can_stop_the_machine_after_it(hub, workspace, run, monkeypatch, tmp_path, capsys):
    from helpers.hub.__main__ import main
    from tests.test_instance import calls, fake_cli

    bin_dir = fake_cli(tmp_path / "bin", "vastai")
    monkeypatch.setenv("PATH", f"{bin_dir}:{__import__('os').environ['PATH']}")
    monkeypatch.setenv("CONTAINER_ID", "77")
    monkeypatch.setenv("CONTAINER_API_KEY", "k" * 20)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    base = ["--workspace", str(workspace.root), "upload", "r1", "--repo", "x", "--endpoint", hub.url]
    assert main([*base, "--repo", "someone/x", "--stop-instance-when-done"]) == 2 and not calls(bin_dir)
    assert main([*base, "--stop-instance-when-done"]) == 0
    assert calls(bin_dir)[0]["args"][:3] == ["stop", "instance", "77"]
    assert "upload finished: stopping this machine" in capsys.readouterr().out
