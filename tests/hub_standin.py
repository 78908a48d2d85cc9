"""A local stand-in for the Hugging Face Hub's HTTP API, on 127.0.0.1: the endpoints ``huggingface_hub`` calls to
upload (whoami, create repo, repo info, tree, preupload, the LFS batch API, the LFS PUT, commit) and to download
(resolve), with tokens of given users, roles and organisations, repos that belong to someone, and failures on
purpose (``fail_puts``: the LFS upload of these sha256s refused once, as an expired upload URL is;
``fail_commits``: the commit of these paths errors once). Uploads go through its LFS path (``HF_HUB_DISABLE_XET``): the Xet protocol has no stand-in here.

Shared by the upload tests of runs (issue 15) and of evaluation results (issue 12)::

    with HubStandIn(tokens={"hf_writer": ("me", "write", ["myorg"])}) as hub:
        upload_files(files, "me/run", token="hf_writer", endpoint=hub.url)
        hub.repos["me/run"].files  # path -> bytes
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import re
import threading
from dataclasses import dataclass, field

TOKEN, READER = "hf_writerTOKEN1234567890", "hf_readerTOKEN1234567890"  # the ``hub`` fixture's (conftest.py)
LFS_THRESHOLD = 1000  # bytes: files above go through LFS (the real Hub's limit is 10 MB; tests use small files)


@dataclass
class Repo:
    owner: str
    private: bool
    files: dict[str, bytes] = field(default_factory=dict)
    lfs: set[str] = field(default_factory=set)  # paths stored as LFS
    commits: int = 0


class HubStandIn:
    def __init__(self, tokens: dict[str, tuple[str, str, list[str]]]):
        self.tokens = tokens  # token -> (user, role, orgs)
        self.repos: dict[str, Repo] = {}
        self.objects: dict[str, bytes] = {}  # LFS storage by sha256
        self.puts: list[str] = []  # oids whose bytes were received
        self.fail_puts: set[str] = set()  # sha256s whose next LFS PUT is refused
        self.fail_commits: set[str] = set()  # paths whose next commit errors
        self.seen_auth: list[str] = []
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    def __enter__(self) -> HubStandIn:
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    # -- the API -------------------------------------------------------------------------------------------
    def user_of(self, auth: str | None) -> tuple[str, str, list[str]] | None:
        token = (auth or "").removeprefix("Bearer ").strip()
        return self.tokens.get(token)

    def can_write(self, who, repo_id: str) -> bool:
        return who is not None and who[1] in ("write", "fineGrained") and repo_id.split("/")[0] in {who[0], *who[2]}

    def route(self, method: str, path: str, body: bytes, auth: str | None) -> tuple[int, object]:
        who = self.user_of(auth)
        if path == "/api/whoami-v2":
            if who is None:
                return 401, {"error": "Invalid credentials in Authorization header"}
            return 200, {"type": "user", "name": who[0], "orgs": [{"name": o} for o in who[2]],
                         "auth": {"type": "access_token", "accessToken": {"displayName": "t", "role": who[1]}}}
        if path == "/api/repos/create" and method == "POST":
            return self.create(json.loads(body), who)
        if path == "/api/validate-yaml" and method == "POST":  # a README.md's metadata, checked before its commit
            return 200, {"errors": [], "warnings": []}
        m = re.match(r"^/api/models/([^/]+/[^/]+)(/.*)?$", path)
        if m:
            return self.repo_api(method, m.group(1), m.group(2) or "", body, who)
        m = re.match(r"^/([^/]+/[^/]+)\.git/info/lfs/objects/batch$", path)
        if m and method == "POST":
            return self.lfs_batch(m.group(1), json.loads(body), who)
        m = re.match(r"^/lfs-upload/([0-9a-f]{64})/(.+)$", path)
        if m and method == "PUT":
            return self.lfs_put(m.group(1), m.group(2), body)
        m = re.match(r"^/([^/]+/[^/]+)/resolve/[^/]+/(.+)$", path)
        if m and m.group(2) in getattr(self.repos.get(m.group(1)), "files", {}):
            return 200, self.repos[m.group(1)].files[m.group(2)]
        return 404, {"error": f"no route {method} {path}"}

    def create(self, data: dict, who) -> tuple[int, object]:
        repo_id = f"{data.get('organization') or (who or ('?',))[0]}/{data['name']}"
        if who is None:
            return 401, {"error": "Invalid credentials"}
        if repo_id in self.repos:
            return 409, {"error": "You already created this model repo", "url": f"{self.url}/{repo_id}"}
        if not self.can_write(who, repo_id):
            return 403, {"error": "You don't have the rights to create a model under the namespace "
                                  f"\"{repo_id.split('/')[0]}\""}
        private = data.get("visibility", "private" if data.get("private") else "public") == "private"
        self.repos[repo_id] = Repo(repo_id.split("/")[0], private)
        return 200, {"url": f"{self.url}/{repo_id}", "name": repo_id}

    def repo_api(self, method: str, repo_id: str, rest: str, body: bytes, who) -> tuple[int, object]:
        repo = self.repos.get(repo_id)
        visible = repo is not None and (not repo.private or (who and repo.owner in {who[0], *who[2]}))
        if not visible:
            return 404, {"error": "Repository Not Found"}
        if method == "GET" and rest in ("", "/revision/main"):
            return 200, {"id": repo_id, "private": repo.private, "sha": f"{repo.commits:040x}",
                         "siblings": [{"rfilename": p} for p in repo.files]}
        if method == "GET" and rest.startswith("/tree/main"):
            return 200, [self.tree_entry(repo, p) for p in sorted(repo.files)]
        if method == "POST" and rest == "/preupload/main":
            files = json.loads(body)["files"]
            return 200, {"files": [{"path": f["path"], "uploadMode": "lfs" if f["size"] > LFS_THRESHOLD else "regular",
                                    "shouldIgnore": False} for f in files]}
        if method == "POST" and rest == "/commit/main":
            if not self.can_write(who, repo_id):
                return 403, {"error": "You don't have the rights to write to this repo"}
            return self.commit(repo_id, repo, [json.loads(line) for line in body.splitlines() if line.strip()])
        return 404, {"error": f"no route {method} {rest}"}

    @staticmethod
    def tree_entry(repo: Repo, path: str) -> dict:
        data = repo.files[path]
        entry = {"type": "file", "path": path, "size": len(data),
                 "oid": hashlib.sha1(f"blob {len(data)}\0".encode() + data).hexdigest()}
        if path in repo.lfs:
            entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
        return entry

    def lfs_batch(self, repo_id: str, data: dict, who) -> tuple[int, object]:
        if not self.can_write(who, repo_id):
            return 403, {"message": "write access required"}
        objects = []
        for obj in data["objects"]:
            if obj["oid"] in self.objects:  # the bytes are here already (an earlier, unfinished upload)
                objects.append({"oid": obj["oid"], "size": obj["size"]})
            else:
                objects.append({"oid": obj["oid"], "size": obj["size"], "actions": {"upload": {
                    "href": f"{self.url}/lfs-upload/{obj['oid']}/{repo_id}"}}})
        return 200, {"transfer": "basic", "objects": objects}

    def lfs_put(self, oid: str, repo_id: str, body: bytes) -> tuple[int, object]:
        if oid in self.fail_puts:  # once: the retry after it goes through
            self.fail_puts.discard(oid)
            return 403, {"error": "Request has expired"}
        if hashlib.sha256(body).hexdigest() != oid:
            return 400, {"error": "sha256 mismatch"}
        self.objects[oid] = body
        self.puts.append(oid)
        return 200, {}

    def commit(self, repo_id: str, repo: Repo, lines: list[dict]) -> tuple[int, object]:
        ops = [line["value"] for line in lines if line["key"] in ("file", "lfsFile")]
        failing = [op["path"] for op in ops if op["path"] in self.fail_commits]
        if failing:
            self.fail_commits.discard(failing[0])
            return 500, {"error": "Internal Error - We're working hard to fix this as soon as possible!"}
        for line in lines:
            value = line["value"]
            if line["key"] == "file":
                repo.files[value["path"]] = base64.b64decode(value["content"])
                repo.lfs.discard(value["path"])
            elif line["key"] == "lfsFile":
                if value["oid"] not in self.objects:
                    return 422, {"error": f"LFS object {value['oid']} was never uploaded"}
                repo.files[value["path"]] = self.objects[value["oid"]]
                repo.lfs.add(value["path"])
        repo.commits += 1
        return 200, {"commitUrl": f"{self.url}/{repo_id}/commit/{repo.commits:040x}", "commitOid": f"{repo.commits:040x}",
                     "pullRequestUrl": None}

    def _handler(self):
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def handle_one(self, method: str):
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    body = b""
                    while (size := int(self.rfile.readline().strip() or b"0", 16)) > 0:
                        body += self.rfile.read(size)
                        self.rfile.readline()
                    self.rfile.readline()
                else:
                    length = int(self.headers.get("Content-Length") or 0)
                    body = self.rfile.read(length) if length else b""
                auth = self.headers.get("Authorization")
                hub.seen_auth.append(auth or "")
                status, payload = hub.route(method, self.path.split("?")[0], body, auth)
                raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/octet-stream" if isinstance(payload, bytes)
                                 else "application/json")
                self.send_header("Content-Length", str(len(raw)))
                if status >= 400:
                    self.send_header("X-Error-Message", str(payload.get("error", "")) if isinstance(payload, dict) else "")
                self.end_headers()
                self.wfile.write(raw)

            def do_GET(self):
                self.handle_one("GET")

            def do_POST(self):
                self.handle_one("POST")

            def do_PUT(self):
                self.handle_one("PUT")

        return Handler
