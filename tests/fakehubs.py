"""Fake Hugging Face and ModelScope hubs on 127.0.0.1, close to the real APIs.

Hugging Face: ``/api/{models,datasets}/ORG/NAME/revision/REV`` (``sha``, ``siblings``), the
recursive ``tree`` API paged with ``Link: <...>; rel="next"``, ``/[datasets/]ORG/NAME/resolve/
REV/PATH`` answering small (Git) files itself with ``ETag`` and ``X-Repo-Commit``, and LFS files
with a 302 to a CDN on a second port plus ``X-Linked-Etag`` and ``X-Linked-Size``; errors
carry ``X-Error-Code`` (RepoNotFound, RevisionNotFound, EntryNotFound, GatedRepo).

ModelScope: ``/api/v1/models/ORG/NAME/revisions`` (``RevisionMap``), ``.../repo/files`` and
``.../repo?Revision=&FilePath=`` (a 302 to the CDN), every answer in the
``{Code, Data, Message, RequestId, Success}`` wrapper; the token comes as a Bearer header or
the ``m_session_id`` cookie.

The CDN serves blobs by sha256 with byte ranges, and can be told to corrupt one.

A Hugging Face hub given a ``FakeXetCas`` (tests/fakexet.py) stores its LFS files there too,
uploaded by the real hf_xet client: the tree lists their ``xetHash``, ``resolve`` adds
``X-Xet-Hash`` and a ``Link: <...xet-read-token/REV>; rel="xet-auth"``, and
``/api/{models,datasets}/ORG/NAME/xet-read-token/REV`` mints CAS tokens, so
``huggingface_hub`` downloads those files through the CAS.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, quote, unquote, urlsplit

if TYPE_CHECKING:
    from tests.fakexet import FakeXetCas

    # Files (name -> bytes) into a CAS; name -> xetHash.
    XetUpload = Callable[[FakeXetCas, dict[str, bytes]], dict[str, str]]

TOKEN = "hf_fake_token_0123456789"
LFS_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt")
LFS_MIN_SIZE = 64 * 1024
_RANGE = re.compile(r"bytes=(\d+)-(\d*)")


_DIGESTS: dict[int, tuple[bytes, str]] = {}


def sha256_of(data: bytes) -> str:
    """The sha256 of a file's bytes, computed once per bytes object: the fake serves the same
    large files many times, and hashing hundreds of MiB per range request would make it the
    slowest part of any test or benchmark."""
    if len(data) < 1 << 20:
        return hashlib.sha256(data).hexdigest()
    known = _DIGESTS.get(id(data))
    if known is None or known[0] is not data:
        known = _DIGESTS[id(data)] = (data, hashlib.sha256(data).hexdigest())
    return known[1]


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\x00" % len(data) + data).hexdigest()


def is_lfs(path: str, data: bytes) -> bool:
    return path.endswith(LFS_SUFFIXES) or len(data) >= LFS_MIN_SIZE


@dataclass
class FakeRepo:
    repo_id: str
    dataset: bool = False
    private: bool = False
    gated: bool = False
    branches: dict[str, str] = field(default_factory=dict)
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)
    dates: dict[str, float] = field(default_factory=dict)

    def commit(self, files: dict[str, bytes], branch: str) -> str:
        digest = hashlib.sha1(uuid.uuid4().bytes).hexdigest()
        self.commits[digest] = dict(files)
        self.branches[branch] = digest
        self.dates[digest] = time.time()
        return digest

    def files_at(self, revision: str) -> tuple[str, dict[str, bytes]] | None:
        commit = self.branches.get(revision, revision)
        files = self.commits.get(commit)
        return None if files is None else (commit, files)


@dataclass
class Request:
    server: str
    method: str
    path: str
    headers: dict[str, str]


class FakeHub:
    """One fake hub (``kind``: "hf" or "modelscope") and its CDN, each on its own port."""

    def __init__(
        self,
        kind: str,
        page_size: int = 3,
        cas: FakeXetCas | None = None,
        upload: XetUpload | None = None,
    ) -> None:
        self.kind = kind
        self.page_size = page_size
        self.cas = cas  # LFS files are stored in this Xet CAS too (Hugging Face only)
        # How they get there: tests.fakexet.upload by default (the real hf_xet client).
        self.upload = upload
        self.xet_hashes: dict[str, str] = {}  # sha256 -> xetHash of files uploaded to ``cas``
        self.xet_token_ttl = 3600  # seconds a minted CAS read token lives
        # The one token it takes now: set another to rotate it (the old one then gets 401 on
        # Hugging Face, 403 on ModelScope, as a token that was never valid does).
        self.accepted_token = TOKEN
        # Listed LFS sha256 by path, instead of the true one (a hub whose listing disagrees).
        self.listed_sha256: dict[str, str] = {}
        self.repos: dict[str, FakeRepo] = {}
        self.blobs: dict[str, bytes] = {}
        self.requests: list[Request] = []
        self.corrupt: set[str] = set()  # sha256 of files whose served bytes get one flipped
        self.cdn_bytes_sent = 0  # body bytes the CDN sent (file data, ranges included)
        self.api_failures: list[tuple[int, str | None]] = []  # (status, Retry-After) to answer
        self.next_page_override: str | None = None  # a hostile Link: rel="next" target
        self.lock = threading.Lock()
        self.api = self._server("api", _ApiHandler)
        self.cdn = self._server("cdn", _CdnHandler)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.api.server_address[1]}"

    @property
    def cdn_base(self) -> str:
        return f"http://127.0.0.1:{self.cdn.server_address[1]}"

    def _server(self, name: str, handler: type[BaseHTTPRequestHandler]) -> ThreadingHTTPServer:
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        server.daemon_threads = True
        server.hub = self  # type: ignore[attr-defined]
        server.name = name  # type: ignore[attr-defined]
        # A short poll interval: close() waits for each loop to look, 0.5 s by default.
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        return server

    def close(self) -> None:
        for server in (self.api, self.cdn):
            server.shutdown()
            server.server_close()

    def add_repo(
        self,
        repo_id: str,
        files: dict[str, bytes],
        branch: str | None = None,
        *,
        dataset: bool = False,
        private: bool = False,
        gated: bool = False,
    ) -> FakeRepo:
        repo = FakeRepo(repo_id, dataset=dataset, private=private, gated=gated)
        key = ("datasets/" if repo.dataset else "") + repo_id
        self.repos[key] = repo
        self.push(repo, files, branch)
        return repo

    def push(self, repo: FakeRepo, files: dict[str, bytes], branch: str | None = None) -> str:
        for data in files.values():
            self.blobs[sha256_of(data)] = data
        if self.cas is not None and self.kind == "hf":
            self.store_in_xet(files)
        return repo.commit(files, branch or ("main" if self.kind == "hf" else "master"))

    def store_in_xet(self, files: dict[str, bytes]) -> None:
        """Upload the LFS files the CAS does not hold yet, with the real hf_xet client."""
        from tests.fakexet import upload

        assert self.cas is not None
        fresh: dict[str, bytes] = {}
        for path, data in files.items():
            if is_lfs(path, data) and sha256_of(data) not in self.xet_hashes:
                fresh[sha256_of(data)] = data
        for sha256, xet_hash in (self.upload or upload)(self.cas, fresh).items():
            self.xet_hashes[sha256] = xet_hash

    def xet_hash(self, path: str, data: bytes) -> str | None:
        """The file's xetHash when it is stored in the attached CAS."""
        if self.cas is None or not is_lfs(path, data):
            return None
        return self.xet_hashes.get(sha256_of(data))

    def spoiled(self, data: bytes) -> bytes:
        """``data`` as served: with its middle byte flipped if it was marked corrupt."""
        if not data or sha256_of(data) not in self.corrupt:
            return data
        middle = len(data) // 2
        return data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1 :]

    def seen(self, server: str) -> list[Request]:
        with self.lock:
            return [request for request in self.requests if request.server == server]


@contextmanager
def fake_hub(
    kind: str,
    page_size: int = 3,
    cas: FakeXetCas | None = None,
    upload: XetUpload | None = None,
) -> Iterator[FakeHub]:
    hub = FakeHub(kind, page_size, cas, upload)
    try:
        yield hub
    finally:
        hub.close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    @property
    def hub(self) -> FakeHub:
        return self.server.hub  # type: ignore[attr-defined,no-any-return]

    def log_message(self, format: str, *args: object) -> None:
        return None

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in two writes; without this, Nagle's algorithm and the
        # client's delayed ACK hold every answer back for ~40 ms.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _record(self) -> None:
        with self.hub.lock:
            self.hub.requests.append(
                Request(
                    self.server.name,  # type: ignore[attr-defined]
                    self.command,
                    self.path,
                    {name.lower(): value for name, value in self.headers.items()},
                )
            )

    def send_body(
        self, status: int, body: bytes, headers: dict[str, str] | None = None, head: bool = False
    ) -> int:
        """Send an answer; the body bytes sent."""
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if head:
            return 0
        self.wfile.write(body)
        return len(body)

    def send_json(
        self, status: int, document: object, headers: dict[str, str] | None = None
    ) -> None:
        self.send_body(
            status,
            json.dumps(document).encode(),
            {"Content-Type": "application/json", **(headers or {})},
        )

    def send_content(self, data: bytes, headers: dict[str, str], head: bool) -> int:
        """The bytes, or the range of them asked for (206), as a real server sends them; the
        body bytes sent."""
        match = _RANGE.fullmatch(self.headers.get("Range", "").strip())
        headers = {"Accept-Ranges": "bytes", **headers}
        if match is None:
            return self.send_body(200, data, headers, head)
        start = int(match[1])
        end = min(int(match[2]) if match[2] else len(data) - 1, len(data) - 1)
        if start >= len(data) or start > end:
            return self.send_body(416, b"", {"Content-Range": f"bytes */{len(data)}"}, head)
        headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
        return self.send_body(206, data[start : end + 1], headers, head)

    def token(self) -> str | None:
        authorization = self.headers.get("Authorization", "")
        if authorization.startswith("Bearer "):
            return authorization.removeprefix("Bearer ")
        for part in self.headers.get("Cookie", "").split(";"):
            name, _, value = part.strip().partition("=")
            if name == "m_session_id":
                return value
        return None

    def do_HEAD(self) -> None:
        self._record()
        self.handle_request(head=True)

    def do_GET(self) -> None:
        self._record()
        self.handle_request(head=False)

    def handle_request(self, head: bool) -> None:
        raise NotImplementedError


class _CdnHandler(_Handler):
    def handle_request(self, head: bool) -> None:
        parts = urlsplit(self.path)
        sha256 = parts.path.rsplit("/", 1)[-1]
        data = self.hub.blobs.get(sha256)
        if data is None or "X-Amz-Signature" not in parse_qs(parts.query):
            self.send_body(403, b"<Error>AccessDenied</Error>", head=head)
            return
        sent = self.send_content(self.hub.spoiled(data), {"ETag": f'"{sha256}"'}, head)
        with self.hub.lock:
            self.hub.cdn_bytes_sent += sent


class _ApiHandler(_Handler):
    def handle_request(self, head: bool) -> None:
        with self.hub.lock:
            failure = self.hub.api_failures.pop(0) if self.hub.api_failures else None
        if failure is not None:
            status, retry_after = failure
            headers = {"Retry-After": retry_after} if retry_after else {}
            self.send_json(status, {"error": "injected"}, headers)
            return
        if self.hub.kind == "hf":
            self.handle_hf(head)
        else:
            self.handle_modelscope(head)

    # Hugging Face

    def hf_error(self, status: int, code: str, message: str, head: bool = False) -> None:
        headers = {"X-Error-Code": code, "X-Error-Message": message}
        self.send_body(status, json.dumps({"error": message}).encode(), headers, head)

    def hf_repo(self, key: str, head: bool, content: bool) -> FakeRepo | None:
        repo = self.hub.repos.get(key)
        allowed = self.token() == self.hub.accepted_token
        if repo is None or (repo.private and not allowed):
            self.hf_error(401, "RepoNotFound", "Repository not found", head)
            return None
        if repo.gated and content and not allowed:
            self.hf_error(401, "GatedRepo", "Access to this model is restricted", head)
            return None
        return repo

    def handle_hf(self, head: bool) -> None:
        parts = urlsplit(self.path)
        path = parts.path
        api = re.fullmatch(
            r"/api/(models|datasets)/([^/]+/[^/]+)/(revision|tree)/([^/]+)(/.*)?", path
        )
        if api is not None:
            kind, repo_id, what, revision = api[1], api[2], api[3], unquote(api[4])
            key = ("datasets/" if kind == "datasets" else "") + repo_id
            repo = self.hf_repo(key, head, content=False)
            if repo is None:
                return
            found = repo.files_at(revision)
            if found is None:
                self.hf_error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
                return
            commit, files = found
            if what == "revision":
                self.send_json(200, self.hf_info(repo, commit, files))
            else:
                self.hf_tree(repo, commit, files, parts.query)
            return
        token_route = re.fullmatch(
            r"/api/(models|datasets)/([^/]+/[^/]+)/xet-read-token/([^/]+)", path
        )
        if token_route is not None:
            self.hf_xet_read_token(token_route[1], token_route[2], unquote(token_route[3]), head)
            return
        resolve = re.fullmatch(r"/(datasets/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        if resolve is None:
            self.hf_error(404, "EntryNotFound", "not found", head)
            return
        key = (resolve[1] or "") + resolve[2]
        repo = self.hf_repo(key, head, content=True)
        if repo is None:
            return
        found = repo.files_at(unquote(resolve[3]))
        if found is None:
            self.hf_error(404, "RevisionNotFound", "Invalid rev id", head)
            return
        commit, files = found
        file_path = unquote(resolve[4])
        data = files.get(file_path)
        if data is None:
            self.hf_error(404, "EntryNotFound", f"{file_path} does not exist", head)
            return
        headers = {"X-Repo-Commit": commit}
        if is_lfs(file_path, data):
            sha256 = sha256_of(data)
            pointer = _lfs_pointer(data)
            headers |= {
                "ETag": f'"{git_blob_sha1(pointer)}"',
                "X-Linked-Etag": f'"{sha256}"',
                "X-Linked-Size": str(len(data)),
                "Location": f"{self.hub.cdn_base}/repos/{sha256}?{_signature()}",
            }
            xet_hash = self.hub.xet_hash(file_path, data)
            if xet_hash is not None:
                kind = "datasets" if repo.dataset else "models"
                route = f"{self.hub.endpoint}/api/{kind}/{repo.repo_id}/xet-read-token/{commit}"
                headers |= {"X-Xet-Hash": xet_hash, "Link": f'<{route}>; rel="xet-auth"'}
            self.send_body(302, b"Found.", headers, head)
            return
        headers["ETag"] = f'"{git_blob_sha1(data)}"'
        self.send_content(self.hub.spoiled(data), headers, head)

    def hf_xet_read_token(self, kind: str, repo_id: str, revision: str, head: bool) -> None:
        """A CAS read token for the repository at ``revision``, in the JSON body and in the
        headers huggingface_hub reads (``X-Xet-Cas-Url``, ``X-Xet-Access-Token``,
        ``X-Xet-Token-Expiration``)."""
        repo = self.hf_repo(("datasets/" if kind == "datasets" else "") + repo_id, head, True)
        if repo is None:
            return
        if repo.files_at(revision) is None:
            self.hf_error(404, "RevisionNotFound", f"Invalid rev id: {revision}", head)
            return
        if self.hub.cas is None:
            self.hf_error(404, "EntryNotFound", "this repository is not stored in Xet", head)
            return
        token, exp = self.hub.cas.mint_token(self.hub.xet_token_ttl)
        cas_url = self.hub.cas.endpoint
        headers = {
            "X-Xet-Cas-Url": cas_url,
            "X-Xet-Access-Token": token,
            "X-Xet-Token-Expiration": str(exp),
        }
        self.send_json(200, {"accessToken": token, "exp": exp, "casUrl": cas_url}, headers)

    def hf_info(self, repo: FakeRepo, commit: str, files: dict[str, bytes]) -> dict[str, object]:
        return {
            "_id": hashlib.md5(repo.repo_id.encode()).hexdigest()[:24],
            "id": repo.repo_id,
            "private": repo.private,
            "gated": "manual" if repo.gated else False,
            "disabled": False,
            "sha": commit,
            "lastModified": time.strftime(
                "%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(repo.dates[commit])
            ),
            "tags": [],
            "siblings": [{"rfilename": path} for path in sorted(files)],
        }

    def hf_tree(self, repo: FakeRepo, commit: str, files: dict[str, bytes], query: str) -> None:
        entries: list[dict[str, object]] = []
        directories = sorted({p.rsplit("/", 1)[0] for p in files if "/" in p})
        for directory in directories:
            entries.append({"type": "directory", "oid": "0" * 40, "size": 0, "path": directory})
        for path in sorted(files):
            data = files[path]
            entry: dict[str, object] = {"type": "file", "size": len(data), "path": path}
            if is_lfs(path, data):
                pointer = _lfs_pointer(data)
                entry["oid"] = git_blob_sha1(pointer)
                entry["lfs"] = {
                    "oid": self.hub.listed_sha256.get(path, sha256_of(data)),
                    "size": len(data),
                    "pointerSize": len(pointer),
                }
                xet_hash = self.hub.xet_hash(path, data)
                if xet_hash is not None:
                    entry["xetHash"] = xet_hash
            else:
                entry["oid"] = git_blob_sha1(data)
            entries.append(entry)
        params = parse_qs(query)
        cursor = int(params.get("cursor", ["0"])[0])
        page = entries[cursor : cursor + self.hub.page_size]
        headers = {}
        if cursor + self.hub.page_size < len(entries):
            kind = "datasets" if repo.dataset else "models"
            following = (
                f"{self.hub.endpoint}/api/{kind}/{repo.repo_id}/tree/{commit}"
                f"?recursive=True&expand=False&cursor={cursor + self.hub.page_size}"
            )
            headers["Link"] = f'<{following}>; rel="next"'
        if self.hub.next_page_override is not None:
            headers["Link"] = f'<{self.hub.next_page_override}>; rel="next"'
        self.send_json(200, page, headers)

    # ModelScope

    def ms_reply(
        self, status: int, data: object, code: int | None = None, message: str = ""
    ) -> None:
        self.send_json(
            status,
            {
                "Code": code if code is not None else status,
                "Data": data,
                "Message": message or "success",
                "RequestId": uuid.uuid4().hex,
                "Success": status == 200 and code in (None, 200),
            },
        )

    def handle_modelscope(self, head: bool) -> None:
        parts = urlsplit(self.path)
        match = re.fullmatch(
            r"/api/v1/models/([^/]+/[^/]+)/(revisions|repo/files|repo)", parts.path
        )
        if match is None:
            self.ms_reply(404, None, 10010205001, "not found")
            return
        repo = self.hub.repos.get(match[1])
        if repo is None:
            self.ms_reply(404, None, 10010205001, "record not found")
            return
        if repo.private and self.token() != self.hub.accepted_token:
            self.ms_reply(403, None, 10010205003, "no permission to access this model")
            return
        params = {name: values[0] for name, values in parse_qs(parts.query).items()}
        if match[2] == "revisions":
            branches = [
                {"Revision": name, "CommitId": commit, "CreatedAt": int(repo.dates[commit])}
                for name, commit in repo.branches.items()
            ]
            self.ms_reply(200, {"RevisionMap": {"Branches": branches, "Tags": []}})
            return
        found = repo.files_at(params.get("Revision", "master"))
        if found is None:
            self.ms_reply(404, None, 10010205001, "revision not found")
            return
        commit, files = found
        if match[2] == "repo/files":
            listing = [
                {
                    "Name": path.rsplit("/", 1)[-1],
                    "Path": path,
                    "Type": "blob",
                    "Size": len(data),
                    "Sha256": sha256_of(data),
                    "IsLFS": is_lfs(path, data),
                    "Mode": "33188",
                    "Revision": commit,
                    "CommittedDate": int(repo.dates[commit]),
                }
                for path, data in sorted(files.items())
            ]
            directories = sorted({p.rsplit("/", 1)[0] for p in files if "/" in p})
            listing += [{"Name": d, "Path": d, "Type": "tree", "Size": 0} for d in directories]
            self.ms_reply(200, {"Files": listing})
            return
        file_path = params.get("FilePath", "")
        data = files.get(file_path)
        if data is None:
            self.ms_reply(404, None, 10010205002, f"file {file_path} not found")
            return
        sha256 = sha256_of(data)
        location = f"{self.hub.cdn_base}/oss/{quote(sha256)}?{_signature()}"
        self.send_body(302, b"", {"Location": location}, head)


def _signature() -> str:
    """A signed URL's query: the CDN refuses URLs without one, as a bucket would."""
    return f"X-Amz-Expires=3600&X-Amz-Signature={uuid.uuid4().hex}"


def _lfs_pointer(data: bytes) -> bytes:
    sha256 = sha256_of(data)
    return (
        f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {len(data)}\n"
    ).encode()
