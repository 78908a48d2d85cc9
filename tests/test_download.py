"""Downloads against a local HTTP server on loopback: resume, dropped connections, HTML-instead-of-file, HTTP
errors, full disk, archives (traversal, absolute paths, links, zip bomb), a fake Hub, and a fake gallery-dl."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import os
import re
import stat
import sys
import tarfile
import threading
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from helpers.download import __main__ as download_cli
from helpers.download import transfer
from helpers.download.archives import UnsafeArchiveError, extract_archive
from helpers.download.datasets import download_dataset
from helpers.download.model_store import download_model
from helpers.download.sources import DownloadError, detect_source
from helpers.download.transfer import download_url

PAYLOAD = os.urandom(3 * 1024 * 1024 + 123)


def _zip_bytes(entries: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
        for name, target in (links or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, target)
    return buf.getvalue()


def _png_bytes(colour=(200, 20, 20), size=(300, 300)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "PNG")
    return buf.getvalue()


class Server(http.server.ThreadingHTTPServer):
    """Loopback server whose routes the tests fill in; records every request's path and headers."""

    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), Handler)
        self.files: dict[str, tuple[bytes, dict[str, str]]] = {}
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.drop_first: set[str] = set()  # paths whose first GET stops half way
        self.reset_first: set[str] = set()  # paths whose first GET is reset (TCP RST) half way
        self.no_range: set[str] = set()
        self.status: dict[str, int] = {}
        self.redirects: dict[str, str] = {}
        self.hub: dict[str, dict[str, bytes]] = {}  # fake Hub: repo id -> {path: bytes}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # keep test output clean
        pass

    def do_HEAD(self):
        self._serve(head=True)

    def do_GET(self):
        self._serve(head=False)

    def _send(self, code: int, body: bytes, headers: dict[str, str], head: bool, cut: bool = False,
              reset: bool = False):
        self.send_response(code)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        if cut:
            self.send_header("Connection", "close")
        self.end_headers()
        if not head:
            self.wfile.write(body[: len(body) // 2] if cut or reset else body)
            if reset:
                import socket
                import struct as st

                self.wfile.flush()
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, st.pack("ii", 1, 0))
                self.close_connection = True
                return
            if cut:
                self.wfile.flush()
                self.close_connection = True

    def _serve(self, head: bool):
        srv: Server = self.server
        path = self.path.split("?")[0]
        srv.requests.append((self.command, self.path, {k.lower(): v for k, v in self.headers.items()}))
        if path.startswith("/api/") or "/resolve/" in path:
            return self._serve_hub(path, head)
        if path in srv.redirects:
            return self._send(302, b"", {"Location": srv.redirects[path]}, head)
        if path in srv.status:
            return self._send(srv.status[path], b"<html>no</html>", {"Content-Type": "text/html"}, head)
        if path not in srv.files:
            return self._send(404, b"not found", {"Content-Type": "text/plain"}, head)
        body, headers = srv.files[path]
        headers = {"ETag": '"' + hashlib.md5(body).hexdigest() + '"', "Accept-Ranges": "bytes", **headers}
        rng = self.headers.get("Range")
        if rng and path not in srv.no_range:
            start = int(re.match(r"bytes=(\d+)-", rng).group(1))
            if_range = self.headers.get("If-Range")
            if if_range and if_range != headers["ETag"]:
                return self._send(200, body, headers, head)
            if start >= len(body):
                return self._send(416, b"", {"Content-Range": f"bytes */{len(body)}"}, head)
            return self._send(206, body[start:], {**headers, "Content-Range":
                                                  f"bytes {start}-{len(body) - 1}/{len(body)}"}, head)
        cut = self.command == "GET" and path in srv.drop_first
        reset = self.command == "GET" and path in srv.reset_first
        if cut or reset:  # only the first GET misbehaves
            srv.drop_first.discard(path)
            srv.reset_first.discard(path)
        return self._send(200, body, headers, head, cut=cut, reset=reset)

    def _serve_hub(self, path: str, head: bool):
        srv: Server = self.server
        m = re.match(r"^/api/(datasets|models)/([^/]+/[^/]+)(?:/revision/([^/]+)|/tree/([^/]+).*)?$", path)
        if m:
            repo = m.group(2)
            if repo not in srv.hub:
                return self._send(404, json.dumps({"error": "Repository not found"}).encode(),
                                  {"Content-Type": "application/json", "X-Error-Code": "RepoNotFound"}, head)
            files = srv.hub[repo]
            sha = hashlib.sha1(json.dumps(sorted(files)).encode()).hexdigest()
            if m.group(4) is not None:
                listing = [{"type": "file", "path": p, "size": len(b), "oid": hashlib.sha1(b).hexdigest()}
                           for p, b in sorted(files.items())]
                return self._send(200, json.dumps(listing).encode(), {"Content-Type": "application/json"}, head)
            info = {"id": repo, "sha": sha, "private": False, "siblings": [{"rfilename": p} for p in sorted(files)]}
            return self._send(200, json.dumps(info).encode(), {"Content-Type": "application/json"}, head)
        m = re.match(r"^/(?:datasets/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)$", path)
        if m and m.group(1) in srv.hub and m.group(3) in srv.hub[m.group(1)]:
            files = srv.hub[m.group(1)]
            body = files[m.group(3)]
            sha = hashlib.sha1(json.dumps(sorted(files)).encode()).hexdigest()
            return self._send(200, body, {"X-Repo-Commit": sha, "ETag": '"' + hashlib.sha1(body).hexdigest() + '"',
                                          "Content-Type": "application/octet-stream"}, head)
        return self._send(404, b"{}", {"Content-Type": "application/json", "X-Error-Code": "EntryNotFound"}, head)


@pytest.fixture
def server():
    srv = Server()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


# ----------------------------------------------------------------------------------------------- sources


@pytest.mark.parametrize("text, kind, value", [
    ("owner/name", "hub", "owner/name"),
    ("datasets/owner/name", "hub", "owner/name"),
    ("https://huggingface.co/datasets/owner/name/tree/v2", "hub", "owner/name"),
    ("https://huggingface.co/owner/model/resolve/main/m.safetensors", "url", None),
    ("https://civitai.com/civitai/models/12345", "civitai", None),
    ("https://danbooru.donmai.us/posts?tags=cat", "gallery", None),
    ("https://www.pinterest.com/someone/board/", "gallery", None),
    ("https://x.com/artist/media", "gallery", None),
    ("https://example.com/data.zip", "url", None),
])
def test_detect_source(text, kind, value):
    src = detect_source(text)
    assert src.kind == kind
    if value:
        assert src.value == value


def test_detect_source_local_and_bad(tmp_path):
    (tmp_path / "a.zip").write_bytes(_zip_bytes({"x.png": b"1"}))
    assert detect_source(str(tmp_path)).kind == "folder"
    assert detect_source(str(tmp_path / "a.zip")).kind == "archive"
    with pytest.raises(DownloadError, match="not an existing path"):
        detect_source("not a thing")
    with pytest.raises(DownloadError, match="scheme"):
        detect_source("ftp://example.com/x.zip")


# ----------------------------------------------------------------------------------------------- HTTP


def test_download_resumes_after_dropped_connection(server, tmp_path):
    server.files["/model.safetensors"] = (PAYLOAD, {"Content-Type": "application/octet-stream"})
    server.drop_first.add("/model.safetensors")
    digest = hashlib.sha256(PAYLOAD).hexdigest()
    got = download_url(server.url + "/model.safetensors", tmp_path, sha256=digest, progress=False)
    assert got == tmp_path / "model.safetensors" and got.read_bytes() == PAYLOAD
    gets = [h for m, p, h in server.requests if m == "GET"]
    assert len(gets) == 2 and gets[1]["range"] == f"bytes={len(PAYLOAD) // 2}-"
    assert gets[1]["if-range"]  # resumes only if the file did not change
    assert not list(tmp_path.glob(".download-*"))
    # asked again: reused without a new GET
    n = len(server.requests)
    assert download_url(server.url + "/model.safetensors", tmp_path, sha256=digest, progress=False) == got
    assert [m for m, _, _ in server.requests[n:]].count("GET") <= 1 and not (tmp_path / "model (1).safetensors").exists()


def test_connection_reset_resumes(server, tmp_path):
    server.files["/r.bin"] = (PAYLOAD, {})
    server.reset_first.add("/r.bin")
    got = download_url(server.url + "/r.bin", tmp_path / "r.bin", progress=False)
    assert got.read_bytes() == PAYLOAD
    assert sum(1 for m, p, _ in server.requests if m == "GET") == 2


def test_disk_full_while_writing_keeps_the_part(server, tmp_path, monkeypatch):
    import errno

    server.files["/f.bin"] = (PAYLOAD, {})

    def full(resp, part, first, *args):
        part.write_bytes(first)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(transfer, "_stream_body", full)
    with pytest.raises(DownloadError, match="disk full.*resumes"):
        download_url(server.url + "/f.bin", tmp_path, progress=False)
    monkeypatch.undo()
    assert next(tmp_path.glob(".download-*.part")).stat().st_size > 0
    assert download_url(server.url + "/f.bin", tmp_path, progress=False).read_bytes() == PAYLOAD
    assert server.requests[-1][2].get("range")  # the second run resumed


def test_resume_from_earlier_run_and_server_without_range(server, tmp_path):
    url = server.url + "/big.bin"
    server.files["/big.bin"] = (PAYLOAD, {})
    server.drop_first.add("/big.bin")
    with pytest.raises(DownloadError, match="resume"):
        download_url(url, tmp_path / "big.bin", retries=0, progress=False)
    assert not (tmp_path / "big.bin").exists()
    part = next(tmp_path.glob(".download-*.part"))
    assert 0 < part.stat().st_size < len(PAYLOAD)
    server.no_range.add("/big.bin")  # this time the server ignores Range: the download restarts cleanly
    got = download_url(url, tmp_path / "big.bin", progress=False)
    assert got.read_bytes() == PAYLOAD


def test_changed_file_on_server_restarts(server, tmp_path):
    url = server.url + "/v.bin"
    server.files["/v.bin"] = (PAYLOAD, {})
    server.drop_first.add("/v.bin")
    with pytest.raises(DownloadError):
        download_url(url, tmp_path / "v.bin", retries=0, progress=False)
    new = PAYLOAD[::-1]
    server.files["/v.bin"] = (new, {})
    assert download_url(url, tmp_path / "v.bin", progress=False).read_bytes() == new


def test_sha256_mismatch_keeps_file_aside(server, tmp_path):
    server.files["/f.bin"] = (b"abc" * 1000, {})
    with pytest.raises(DownloadError, match="does not match"):
        download_url(server.url + "/f.bin", tmp_path, sha256="0" * 64, progress=False)
    assert list(tmp_path.glob("*.bad-sha256")) and not (tmp_path / "f.bin").exists()


def test_html_instead_of_file(server, tmp_path):
    server.files["/share/abc"] = (b"<!DOCTYPE html><html><body>Sign in</body></html>", {"Content-Type": "text/html"})
    server.files["/sneaky.zip"] = (b"<!doctype html>\n<html><head></head></html>", {"Content-Type": "application/zip"})
    for path in ("/share/abc", "/sneaky.zip"):
        with pytest.raises(DownloadError, match="web page"):
            download_url(server.url + path, tmp_path, progress=False)
    assert not [p for p in tmp_path.iterdir() if not p.name.startswith(".")]


@pytest.mark.parametrize("code, words", [(404, "not found"), (401, "needs a login"), (403, "forbidden")])
def test_http_errors_are_explained(server, tmp_path, code, words):
    server.status["/x.zip"] = code
    with pytest.raises(DownloadError, match=words):
        download_url(server.url + "/x.zip", tmp_path, retries=0, progress=False)


def test_full_disk_is_refused_before_the_transfer(server, tmp_path, monkeypatch):
    server.files["/huge.safetensors"] = (PAYLOAD, {})
    usage = transfer.shutil.disk_usage(tmp_path)
    monkeypatch.setattr(transfer.shutil, "disk_usage",
                        lambda p: usage._replace(free=transfer.DISK_MARGIN + len(PAYLOAD) // 2))
    with pytest.raises(DownloadError, match="not enough disk"):
        download_url(server.url + "/huge.safetensors", tmp_path, progress=False)
    parts = list(tmp_path.glob(".download-*.part"))
    assert all(p.stat().st_size == 0 for p in parts)


def test_content_disposition_and_auth_dropped_on_redirect(server, tmp_path):
    server.files["/dl/1"] = (b"weights" * 100, {"Content-Disposition": 'attachment; filename="my model.safetensors"'})
    other = server.url.replace("127.0.0.1", "localhost")
    server.redirects["/civitai/models/1"] = other + "/dl/1"
    got = download_url(server.url + "/civitai/models/1", tmp_path, headers={"Authorization": "Bearer secret"},
                       progress=False)
    assert got.name == "my model.safetensors"
    sent = {p: h for m, p, h in server.requests if m == "GET"}
    assert sent["/civitai/models/1"].get("authorization") == "Bearer secret"
    assert "authorization" not in sent["/dl/1"]  # the token never reaches the other host


# ----------------------------------------------------------------------------------------------- archives


def test_zip_with_parent_paths_is_refused(tmp_path):
    arc = tmp_path / "evil.zip"
    arc.write_bytes(_zip_bytes({"ok.png": b"1", "../evil.txt": b"owned"}))
    with pytest.raises(UnsafeArchiveError, match=r"\.\."):
        extract_archive(arc, tmp_path / "out", progress=False)
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "out" / "ok.png").exists()


def test_absolute_paths_are_refused(tmp_path):
    for name in ("/etc/evil.txt", "C:/evil.txt", "\\\\server\\evil.txt"):
        arc = tmp_path / "abs.zip"
        arc.write_bytes(_zip_bytes({name: b"x"}))
        with pytest.raises(UnsafeArchiveError, match="absolute"):
            extract_archive(arc, tmp_path / "out", progress=False)


def test_links_are_never_created(tmp_path):
    arc = tmp_path / "links.zip"
    arc.write_bytes(_zip_bytes({"a/img.png": b"1"}, links={"a/passwd": "/etc/passwd"}))
    res = extract_archive(arc, tmp_path / "out", progress=False)
    assert (tmp_path / "out" / "img.png").read_bytes() == b"1"  # single top folder dropped
    assert not any(p.is_symlink() for p in (tmp_path / "out").rglob("*")) and res.skipped
    tar_path = tmp_path / "links.tar.gz"
    with tarfile.open(tar_path, "w:gz") as tf:
        for name, target in (("ds/up", "../../.."), ("ds/pw", "/etc/passwd")):
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tf.addfile(info)
        data = b"caption"
        info = tarfile.TarInfo("ds/10_cat/x.txt")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    res = extract_archive(tar_path, tmp_path / "out2", progress=False)
    assert (tmp_path / "out2" / "10_cat" / "x.txt").read_bytes() == b"caption"
    assert not any(p.is_symlink() for p in (tmp_path / "out2").rglob("*")) and len(res.skipped) == 2


def test_zip_bomb_is_refused(tmp_path):
    arc = tmp_path / "bomb.zip"
    arc.write_bytes(_zip_bytes({f"z{i}.bin": bytes(20 << 20) for i in range(3)}))
    assert arc.stat().st_size < 1 << 20
    with pytest.raises(UnsafeArchiveError, match="limit"):
        extract_archive(arc, tmp_path / "out", max_total_bytes=16 << 20, progress=False)
    with pytest.raises(UnsafeArchiveError, match="entries"):
        extract_archive(arc, tmp_path / "out", max_files=2, progress=False)
    assert not any((tmp_path / "out").rglob("*.bin")) if (tmp_path / "out").exists() else True


def test_lying_zip_headers_are_caught(tmp_path):
    data = bytearray(_zip_bytes({"a.bin": bytes(4 << 20)}))
    cd = data.rfind(b"PK\x01\x02")  # central directory: uncompressed size at offset 24
    data[cd + 24:cd + 28] = (1000).to_bytes(4, "little")
    lfh = data.find(b"PK\x03\x04")
    data[lfh + 22:lfh + 26] = (1000).to_bytes(4, "little")
    arc = tmp_path / "liar.zip"
    arc.write_bytes(bytes(data))
    with pytest.raises(DownloadError):
        extract_archive(arc, tmp_path / "out", max_total_bytes=1 << 20, progress=False)
    assert not (tmp_path / "out" / "a.bin").exists()


def test_extract_keeps_nested_folders_and_never_overwrites(tmp_path):
    arc = tmp_path / "set.zip"
    arc.write_bytes(_zip_bytes({"10_cat/a.png": b"a", "5_dog/b.png": b"b", "__MACOSX/._a.png": b"junk"}))
    res = extract_archive(arc, tmp_path / "out", progress=False)
    assert sorted(str(p.relative_to(tmp_path / "out")) for p in res.files) == ["10_cat/a.png", "5_dog/b.png"]
    again = extract_archive(arc, tmp_path / "out", progress=False)
    assert not again.files and len(again.reused) == 2
    (tmp_path / "out" / "10_cat" / "a.png").write_bytes(b"edited")
    with pytest.raises(DownloadError, match="replace different"):
        extract_archive(arc, tmp_path / "out", progress=False)
    assert (tmp_path / "out" / "10_cat" / "a.png").read_bytes() == b"edited"


def test_dataset_from_url_archive(server, tmp_path):
    server.files["/set.zip"] = (_zip_bytes({"photos/a red fox_01.png": _png_bytes()}), {"Content-Type": "application/zip"})
    res = download_dataset(server.url + "/set.zip", tmp_path / "ds", progress=False)
    assert res.kind == "url" and res.new_files == 1
    assert (tmp_path / "ds" / "a red fox_01.png").exists()


# ----------------------------------------------------------------------------------------------- Hub


@pytest.fixture
def online_hub(server, monkeypatch, tmp_path):
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", "hf_fake_token_for_tests")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    return server


def test_hub_dataset_with_patterns_token_and_reuse(online_hub, tmp_path):
    srv = online_hub
    srv.hub["me/cats"] = {"train/a.png": _png_bytes(), "train/a.txt": b"a cat", "README.md": b"# cats",
                          "big.parquet": b"P" * 100}
    dest = tmp_path / "ds"
    res = download_dataset("me/cats", dest, exclude=["*.parquet"], endpoint=srv.url, progress=False)
    assert res.kind == "hub"
    assert (dest / "train" / "a.png").exists() and (dest / "train" / "a.txt").read_text() == "a cat"
    assert not (dest / "big.parquet").exists()
    auth = [h.get("authorization") for _, p, h in srv.requests if "/resolve/" in p]
    assert auth and all(a == "Bearer hf_fake_token_for_tests" for a in auth)
    n = sum(1 for m, p, _ in srv.requests if m == "GET" and "/resolve/" in p)
    download_dataset("me/cats", dest, exclude=["*.parquet"], endpoint=srv.url, progress=False)
    assert sum(1 for m, p, _ in srv.requests if m == "GET" and "/resolve/" in p) == n  # reused, not fetched again


def test_hub_missing_repo_is_explained(online_hub, tmp_path):
    with pytest.raises(DownloadError, match="no such dataset repo"):
        download_dataset("me/nothing", tmp_path / "ds", endpoint=online_hub.url, progress=False)


def test_hub_zip_dataset_is_unpacked(online_hub, tmp_path):
    online_hub.hub["me/zipped"] = {"images.zip": _zip_bytes({"x/1.png": _png_bytes()})}
    res = download_dataset("me/zipped", tmp_path / "ds", endpoint=online_hub.url, progress=False)
    assert (tmp_path / "ds" / "1.png").exists() and any("unpacked" in n for n in res.notes)


# ----------------------------------------------------------------------------------------------- gallery-dl

FAKE_GALLERY_DL = r'''#!{python}
import json, os, sys
from pathlib import Path
log = Path(os.environ["FAKE_GDL_LOG"])
args = sys.argv[1:]
cfg = {}
if "--config" in args:
    cfg = json.loads(Path(args[args.index("--config") + 1]).read_text())
log.write_text(json.dumps({"args": args, "config": cfg}))
if os.environ.get("FAKE_GDL_FAIL"):
    print("[danbooru][error] AuthRequired: 'api-key' needed", file=sys.stderr)
    sys.exit(16)
dest = Path(args[args.index("-D") + 1])
png = bytes.fromhex(os.environ["FAKE_GDL_PNG"])
for i in range(3):
    path = dest / f"danbooru_{{1000 + i}}.png"
    if path.exists():
        print("# " + str(path))
        continue
    path.write_bytes(png)
    (dest / (path.name + ".json")).write_text(json.dumps({{"id": 1000 + i, "tag_string_general": "1girl solo",
                                                         "rating": "g"}}))
    print(str(path), flush=True)
print("[danbooru][warning] rate limited, slowing down", file=sys.stderr)
'''


@pytest.fixture
def fake_gallery_dl(tmp_path, monkeypatch):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    exe = bindir / "gallery-dl"
    exe.write_text(FAKE_GALLERY_DL.replace("{{", "{").replace("}}", "}").replace("{python}", sys.executable))
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_GDL_LOG", str(tmp_path / "gdl.json"))
    monkeypatch.setenv("FAKE_GDL_PNG", _png_bytes().hex())
    return tmp_path / "gdl.json"


def test_gallery_dl_args_metadata_and_rerun(fake_gallery_dl, tmp_path):
    cookies = tmp_path / "cookies.txt"
    cookies.write_text("# Netscape HTTP Cookie File\n")
    dest = tmp_path / "ds"
    res = download_dataset("https://danbooru.donmai.us/posts?tags=cat", dest, cookies=str(cookies),
                           username="me", password="s3cret", limit=50, progress=False)
    record = json.loads(fake_gallery_dl.read_text())
    args = record["args"]
    assert args[-1] == "https://danbooru.donmai.us/posts?tags=cat" and "--write-metadata" in args
    assert args[args.index("--cookies") + 1] == str(cookies) and args[args.index("--range") + 1] == "1-50"
    assert "s3cret" not in " ".join(args) and record["config"] == {"extractor": {"username": "me", "password": "s3cret"}}
    assert not Path(args[args.index("--config") + 1]).exists()  # the private config is deleted afterwards
    assert res.kind == "gallery" and res.new_files == 3
    assert all((dest / f"danbooru_{1000 + i}.png.json").exists() for i in range(3))
    assert any("rate limited" in n for n in res.notes)
    again = download_dataset("https://danbooru.donmai.us/posts?tags=cat", dest, progress=False)
    assert again.new_files == 0 and again.reused_files == 3


def test_gallery_dl_failure_is_summarised(fake_gallery_dl, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_GDL_FAIL", "1")
    with pytest.raises(DownloadError, match="login needed"):
        download_dataset("https://danbooru.donmai.us/posts?tags=cat", tmp_path / "ds", progress=False)
    with pytest.raises(DownloadError, match="cookies file"):
        download_dataset("https://x.com/someone/media", tmp_path / "ds", cookies=str(tmp_path / "nope.txt"),
                         progress=False)


# ----------------------------------------------------------------------------------------------- base models


def test_model_from_local_file_is_recognised_and_hashed(tiny_sd15_v_dir, tmp_path):
    from helpers.models.export import save_single_file
    from helpers.models.tiny import build_tiny_pipeline

    pipe = build_tiny_pipeline(arch="sdxl")
    single = save_single_file(pipe.unet, pipe.vae, [pipe.text_encoder, pipe.text_encoder_2],
                              tmp_path / "tiny.safetensors", arch="sdxl")
    record = download_model(str(single), tmp_path / "models", "tiny", progress=False)
    assert record["architecture"] == "sdxl" and record["prediction"] == "epsilon"
    assert record["sha256"] == hashlib.sha256(single.read_bytes()).hexdigest()
    stored = json.loads((tmp_path / "models" / "tiny" / "model.json").read_text())
    assert stored["sha256"] == record["sha256"]
    assert download_model(str(single), tmp_path / "models", "tiny", progress=False)["reused"]
    with pytest.raises(DownloadError, match="different model"):
        download_model(str(tiny_sd15_v_dir), tmp_path / "models", "tiny", progress=False)


def test_model_diffusers_folder_and_pickle_refused(tiny_sd15_v_dir, tmp_path):
    record = download_model(str(tiny_sd15_v_dir), tmp_path / "models", "v", progress=False)
    assert record["kind"] == "diffusers" and record["architecture"] == "sd15"
    assert record["prediction"] == "v_prediction" and record["files"]
    ckpt = tmp_path / "old.ckpt"
    ckpt.write_bytes(b"not really a pickle")
    with pytest.raises(DownloadError, match="pickle"):
        download_model(str(ckpt), tmp_path / "models", "old", progress=False)
    assert (tmp_path / "models" / "old" / "old.ckpt.refused").exists()


def test_cli(server, tmp_path, capsys):
    server.files["/set.zip"] = (_zip_bytes({"a_01.png": _png_bytes()}), {})
    assert download_cli.main([server.url + "/set.zip", "--to", str(tmp_path / "ds"), "--quiet"]) == 0
    assert "1 new files" in capsys.readouterr().out
    assert download_cli.main([server.url + "/gone.zip", "--to", str(tmp_path / "ds"), "--quiet"]) == 2
    assert "404" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        download_cli.main(["x/y"])  # --to or --model is required


def test_model_from_hub_repo_and_from_url(online_hub, tiny_sd15_v_dir, tmp_path):
    srv = online_hub
    srv.hub["me/tiny-sd15-v"] = {str(p.relative_to(tiny_sd15_v_dir)): p.read_bytes()
                                 for p in tiny_sd15_v_dir.rglob("*") if p.is_file()}
    srv.hub["me/tiny-sd15-v"]["unet/diffusion_pytorch_model.bin"] = b"pickle we never fetch"
    record = download_model("me/tiny-sd15-v", tmp_path / "models", "hubv", endpoint=srv.url,
                                     progress=False)
    assert record["kind"] == "diffusers" and record["architecture"] == "sd15"
    assert record["prediction"] == "v_prediction"
    assert not (tmp_path / "models" / "hubv" / "unet" / "diffusion_pytorch_model.bin").exists()
    assert "unet/diffusion_pytorch_model.safetensors" in record["files"]

    weights = (tiny_sd15_v_dir / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()
    srv.files["/dl/99"] = (weights, {"Content-Disposition": 'attachment; filename="unet-only.safetensors"'})
    record = download_model(srv.url + "/dl/99", tmp_path / "models", "unet", progress=False)
    assert record["file"] == "unet-only.safetensors" and record["sha256"] == hashlib.sha256(weights).hexdigest()
    assert record["architecture"] == "sd15"
