"""Model hubs, sans-I/O: source names, API URLs, listings, errors and the mount's file entries.

A hub source names a repository and a revision: ``hf://ORG/NAME[@REV]``,
``hf://datasets/ORG/NAME[@REV]`` or ``modelscope://ORG/NAME[@REV]``. The revision is resolved
to a commit once, at mount; every URL below names that commit, so a moving branch never
changes bytes under a reader.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import TypeGuard
from urllib.parse import quote, unquote, urlencode, urlsplit

from lazyfs.core.manifest import (
    MANIFEST_NAME,
    FileCheck,
    FileEntry,
    Manifest,
    check_path,
    check_tree,
)
from lazyfs.core.signedfiles import SIGNATURE_NAME
from lazyfs.errors import ManifestError, SourceError, UsageError

HF = "hf"
MODELSCOPE = "modelscope"
HUB_NAMES = {HF: "Hugging Face", MODELSCOPE: "ModelScope"}
DEFAULT_ENDPOINTS = {HF: "https://huggingface.co", MODELSCOPE: "https://www.modelscope.cn"}
ENDPOINT_VARIABLES = {HF: "HF_ENDPOINT", MODELSCOPE: "MODELSCOPE_ENDPOINT"}
TOKEN_VARIABLES = {HF: "HF_TOKEN", MODELSCOPE: "MODELSCOPE_API_TOKEN"}
DEFAULT_REVISIONS = {HF: "main", MODELSCOPE: "master"}
# Variables that keep a hub's own client off the network, read as that client reads them:
# huggingface_hub takes the first that is set and non-empty. ModelScope's client has none.
OFFLINE_VARIABLES = {HF: ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"), MODELSCOPE: ()}
_TRUE_SETTINGS = {"1", "ON", "YES", "TRUE"}

# A petabyte: far past any model file, well inside what FUSE and the block arithmetic take.
MAX_FILE_SIZE = 2**50
_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,95})")
_COMMIT = re.compile(r"[0-9a-f]{40}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
# What a bearer token may hold (RFC 6750's b64token, and any other visible ASCII).
_HEADER_TOKEN = re.compile(r"[\x21-\x7e]+")
# Characters a revision never needs, and that would make trouble in a URL or a mount table.
_BAD_REVISION = re.compile(r"[\x00-\x20\x7f,?#\\]|\.\.")


@dataclass(frozen=True)
class HubRepo:
    hub: str
    repo_id: str
    revision: str
    dataset: bool = False

    @property
    def name(self) -> str:
        """The source as a user would type it, with its revision."""
        kind = "datasets/" if self.dataset else ""
        return f"{self.hub}://{kind}{self.repo_id}@{self.revision}"


@dataclass(frozen=True)
class HubFile:
    """One file of a hub listing at a commit."""

    path: str
    size: int
    sha256: str | None = None  # the hub's sha256 of the content (LFS files, ModelScope)
    git_sha1: str | None = None  # the Git blob id (files stored in Git itself)
    executable: bool = False
    # The Hub's Xet file hash (a Merkle root over the file's chunks) for files stored in Xet:
    # it lets a window of the file be proven without the rest (``core.xetproof``).
    xet_hash: str | None = None

    @property
    def check(self) -> FileCheck:
        if self.sha256 is not None:
            return FileCheck("sha256", self.sha256)
        assert self.git_sha1 is not None
        return FileCheck("git-sha1", self.git_sha1)

    def pending_entry(self) -> FileEntry:
        """The file as an entry still to be verified whole against the hub's digest."""
        return FileEntry(
            self.path, self.size, self.executable, self.sha256 or "", (), self.check, self.xet_hash
        )


@dataclass(frozen=True)
class Snapshot:
    """A repository resolved to one commit: its files."""

    repo: HubRepo
    commit: str
    files: tuple[HubFile, ...]
    modified: float | None = None

    @property
    def name(self) -> str:
        """The source pinned to its commit."""
        return replace(self.repo, revision=self.commit).name


def is_hub_source(text: str) -> bool:
    return text.startswith((f"{HF}://", f"{MODELSCOPE}://"))


# Revisions with a slash that a hub path may name, as huggingface_hub's HfFileSystem knows them.
_SLASHED_REVISION = re.compile(r"refs/pr/\d+|refs/convert/\w+")


def split_hub_path(text: str) -> tuple[str, str]:
    """A hub source in the path form of huggingface_hub's ``HfFileSystem``,
    ``hf://[datasets/]ORG/NAME[@REV]/path/in/repo``, split into the source (``...@REV``) and
    the path in the repository ("" for none). As HfFileSystem reads it, the revision ends at
    the first slash, unless it is ``refs/pr/N`` or ``refs/convert/NAME``; a branch whose name
    has a slash is written with it percent-encoded (``@feature%2Fx``)."""
    hub, sep, rest = text.strip().partition("://")
    if not sep or hub not in HUB_NAMES:
        return text, ""
    name, at, revision = rest.partition("@")
    kind = ""
    if hub == HF and name.startswith("datasets/"):
        kind, name = "datasets/", name.removeprefix("datasets/")
    if not at:
        org, _, remainder = name.partition("/")
        repo, _, path = remainder.partition("/")
        return f"{hub}://{kind}{org}/{repo}", path
    special = _SLASHED_REVISION.match(revision)
    if special is not None and revision[special.end() : special.end() + 1] in ("", "/"):
        revision, path = special[0], revision[special.end() + 1 :]
    else:
        revision, _, path = revision.partition("/")
    return f"{hub}://{kind}{name}@{unquote(revision)}", path


def parse_hub_source(text: str) -> HubRepo:
    """``hf://[datasets/]ORG/NAME[@REV]`` or ``modelscope://ORG/NAME[@REV]``, checked."""
    hub, _, rest = text.strip().partition("://")
    if hub not in HUB_NAMES:
        raise UsageError(f"not a hub source (hf:// or modelscope://): {text}")
    name, at, revision = rest.partition("@")
    dataset = hub == HF and name.startswith("datasets/")
    if dataset:
        name = name.removeprefix("datasets/")
    parts = name.strip("/").split("/")
    if len(parts) != 2 or not all(_NAME.fullmatch(part) for part in parts):
        form = (
            "hf://[datasets/]ORG/NAME[@REVISION]" if hub == HF else f"{hub}://ORG/NAME[@REVISION]"
        )
        raise UsageError(f"not a repository name: {text} (expected {form})")
    if at and (not revision or _BAD_REVISION.search(revision) or len(revision) > 255):
        raise UsageError(f"not a valid revision: {revision!r}")
    return HubRepo(hub, "/".join(parts), revision or DEFAULT_REVISIONS[hub], dataset)


def offline_setting(hub: str, environment: Mapping[str, str]) -> str | None:
    """The variable that puts ``hub`` offline (its client must not ask it), if one does:
    ``HF_HUB_OFFLINE=1`` (or ON, YES, TRUE in any case), else ``TRANSFORMERS_OFFLINE``."""
    for variable in OFFLINE_VARIABLES[hub]:
        value = environment.get(variable)
        if value:
            return variable if value.upper() in _TRUE_SETTINGS else None
    return None


def check_endpoint(hub: str, endpoint: str) -> str:
    parts = urlsplit(endpoint.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query:
        variable = ENDPOINT_VARIABLES[hub]
        raise UsageError(f"{variable} must be an http:// or https:// URL: {endpoint}")
    return endpoint.strip().rstrip("/")


# Hugging Face


def hf_revision_url(endpoint: str, repo: HubRepo) -> str:
    kind = "datasets" if repo.dataset else "models"
    return f"{endpoint}/api/{kind}/{repo.repo_id}/revision/{quote(repo.revision, safe='')}"


def hf_tree_url(endpoint: str, repo: HubRepo, commit: str) -> str:
    kind = "datasets" if repo.dataset else "models"
    return f"{endpoint}/api/{kind}/{repo.repo_id}/tree/{commit}?recursive=true&expand=false"


def token_headers(hub: str, token: str | None) -> dict[str, str]:
    """The headers that carry ``token`` to ``hub``'s own endpoint (none without a token)."""
    if token is None:
        return {}
    headers = {"Authorization": f"Bearer {token}"}
    if hub == MODELSCOPE:
        # ModelScope also takes it as the session cookie (docs/hubs.md).
        headers["Cookie"] = f"m_session_id={token}"
    return headers


def hf_xet_token_url(endpoint: str, repo: HubRepo, commit: str) -> str:
    """Where the Hub hands out read tokens for the repository's Xet storage (CAS)."""
    kind = "datasets" if repo.dataset else "models"
    return f"{endpoint}/api/{kind}/{repo.repo_id}/xet-read-token/{commit}"


def parse_xet_token(body: bytes, where: str) -> tuple[str, float, str]:
    """A Xet read token answer: the token, when it expires (Unix time) and the CAS's URL."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        raise SourceError(f"{where}: the Xet token answer is not JSON") from None
    if not isinstance(document, dict):
        raise SourceError(f"{where}: the Xet token answer is not an object")
    token, expires, cas = document.get("accessToken"), document.get("exp"), document.get("casUrl")
    if not isinstance(token, str) or not token or not isinstance(cas, str):
        raise SourceError(f"{where}: the Xet token answer lacks its token or CAS URL")
    if not _HEADER_TOKEN.fullmatch(token):
        # Said without the token: it is a credential, and one that cannot go in a header.
        raise SourceError(f"{where}: the Xet token has characters no header may carry")
    if not isinstance(expires, int | float) or isinstance(expires, bool):
        raise SourceError(f"{where}: the Xet token answer lacks its expiry")
    if not cas.startswith(("http://", "https://")):
        raise SourceError(f"{where}: the Xet CAS URL is not an http(s) URL")
    return token, float(expires), cas.rstrip("/")


def hf_file_url(endpoint: str, repo: HubRepo, commit: str, path: str) -> str:
    kind = "datasets/" if repo.dataset else ""
    return f"{endpoint}/{kind}{repo.repo_id}/resolve/{commit}/{quote(path)}"


def parse_hf_revision(body: bytes, where: str) -> tuple[str, float | None]:
    """The commit a revision names, and when it was made (the ``revision`` API)."""
    document = _json_object(body, where)
    commit = document.get("sha")
    if not isinstance(commit, str) or not _COMMIT.fullmatch(commit):
        raise SourceError(f"{where}: the hub's answer has no commit id")
    return commit, _timestamp(document.get("lastModified"))


def parse_hf_tree_page(body: bytes, where: str) -> list[HubFile]:
    """The files of one page of the recursive ``tree`` API (directories are implied)."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        raise SourceError(f"{where}: the hub's listing is not JSON") from None
    if not isinstance(document, list):
        raise SourceError(f"{where}: the hub's listing is not a list")
    files = []
    for position, item in enumerate(document):
        if not isinstance(item, dict):
            raise SourceError(f"{where}: listing entry {position} is not an object")
        if item.get("type") != "file":
            continue
        path, size = item.get("path"), item.get("size")
        if not isinstance(path, str) or not _is_size(size):
            raise SourceError(f"{where}: listing entry {position} lacks a path or size")
        lfs = item.get("lfs")
        if isinstance(lfs, dict):
            sha256 = lfs.get("oid")
            if not isinstance(sha256, str) or not _SHA256.fullmatch(sha256):
                raise SourceError(f"{where}: {json.dumps(path)} has no LFS sha256 in the listing")
            if lfs.get("size", size) != size:
                raise SourceError(f"{where}: {json.dumps(path)} has two sizes in the listing")
            xet_hash = item.get("xetHash")
            if xet_hash is not None and (
                not isinstance(xet_hash, str) or not _SHA256.fullmatch(xet_hash)
            ):
                raise SourceError(f"{where}: {json.dumps(path)} has a malformed xetHash")
            files.append(HubFile(path, size, sha256=sha256, xet_hash=xet_hash))
            continue
        oid = item.get("oid")
        if not isinstance(oid, str) or not _COMMIT.fullmatch(oid):
            raise SourceError(f"{where}: {json.dumps(path)} has no Git blob id in the listing")
        files.append(HubFile(path, size, git_sha1=oid))
    return files


def hf_error_message(repo: HubRepo, status: int, code: str | None, message: str | None) -> str:
    """One line for an error answer of the Hugging Face Hub (``X-Error-Code``)."""
    name = repo.name
    if code == "RevisionNotFound":
        return f"{name}: revision {repo.revision!r} not found"
    if code == "EntryNotFound":
        return f"{name}: file not found at this revision"
    if code == "GatedRepo":
        return f"{name}: the repository is gated; accept its terms on the hub and use a token"
    if code == "RepoNotFound" or status == 401:
        return (
            f"{name}: repository not found, or private and no valid token was given "
            f"(set {TOKEN_VARIABLES[repo.hub]} or use --token-file)"
        )
    if status == 403:
        return f"{name}: access denied (HTTP 403{_detail(message)})"
    if status == 429:
        return f"{name}: rate-limited by the hub (HTTP 429)"
    return f"{name}: HTTP {status}{_detail(message)}"


# ModelScope


def modelscope_revisions_url(endpoint: str, repo: HubRepo) -> str:
    return f"{endpoint}/api/v1/models/{repo.repo_id}/revisions"


def modelscope_files_url(endpoint: str, repo: HubRepo, commit: str) -> str:
    query = urlencode({"Revision": commit, "Recursive": "True"})
    return f"{endpoint}/api/v1/models/{repo.repo_id}/repo/files?{query}"


def modelscope_file_url(endpoint: str, repo: HubRepo, commit: str, path: str) -> str:
    query = urlencode({"Revision": commit, "FilePath": path})
    return f"{endpoint}/api/v1/models/{repo.repo_id}/repo?{query}"


def modelscope_data(body: bytes, where: str) -> Mapping[str, object]:
    """The ``Data`` of ModelScope's ``{Code, Data, Message, Success}`` wrapper."""
    document = _json_object(body, where)
    if document.get("Code") != 200 or document.get("Success") is False:
        raise SourceError(f"{where}: {modelscope_refusal(document)}")
    data = document.get("Data")
    if not isinstance(data, dict):
        raise SourceError(f"{where}: the hub's answer has no Data")
    return data


def modelscope_refusal(document: Mapping[str, object]) -> str:
    message = document.get("Message")
    shown = _one_line(message) if isinstance(message, str) and message else "no message"
    return f"the hub refused (Code {_one_line(str(document.get('Code')))[:40]}: {shown})"


def parse_modelscope_revision(
    body: bytes, repo: HubRepo, where: str
) -> tuple[str | None, float | None]:
    """The commit a branch or tag names (None if the hub does not say), from the
    ``revisions`` API. A full commit id is taken as it is (the listing then proves it)."""
    data = modelscope_data(body, where)
    revision_map = data.get("RevisionMap")
    if not isinstance(revision_map, dict):
        raise SourceError(f"{where}: the hub's answer has no RevisionMap")
    for group in ("Branches", "Tags"):
        for item in revision_map.get(group) or []:
            if isinstance(item, dict) and item.get("Revision") == repo.revision:
                commit = item.get("CommitId")
                found = commit if isinstance(commit, str) and _COMMIT.fullmatch(commit) else None
                return found, _timestamp(item.get("CreatedAt"))
    if _COMMIT.fullmatch(repo.revision):
        return repo.revision, None
    raise SourceError(f"{repo.name}: revision {repo.revision!r} not found")


def parse_modelscope_files(body: bytes, where: str) -> list[HubFile]:
    files = modelscope_data(body, where).get("Files")
    if not isinstance(files, list):
        raise SourceError(f"{where}: the hub's answer has no Files list")
    result = []
    for position, item in enumerate(files):
        if not isinstance(item, dict):
            raise SourceError(f"{where}: Files[{position}] is not an object")
        if item.get("Type") != "blob":
            continue
        path, size, sha256 = item.get("Path"), item.get("Size"), item.get("Sha256")
        if not isinstance(path, str) or not _is_size(size):
            raise SourceError(f"{where}: Files[{position}] lacks a Path or Size")
        if not isinstance(sha256, str) or not _SHA256.fullmatch(sha256):
            raise SourceError(f"{where}: {json.dumps(path)} has no Sha256 in the listing")
        executable = _is_executable_mode(item.get("Mode"))
        result.append(HubFile(path, size, sha256=sha256, executable=executable))
    return result


def modelscope_error_message(repo: HubRepo, status: int, body: bytes) -> str:
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        document = None
    message = document.get("Message") if isinstance(document, dict) else None
    detail = _detail(message if isinstance(message, str) else None)
    if status in (401, 403):
        return (
            f"{repo.name}: access denied (HTTP {status}{detail}); the repository may be private: "
            f"set {TOKEN_VARIABLES[repo.hub]} or use --token-file"
        )
    if status == 404:
        return f"{repo.name}: repository or revision not found (HTTP 404{detail})"
    if status == 429:
        return f"{repo.name}: rate-limited by the hub (HTTP 429)"
    return f"{repo.name}: HTTP {status}{detail}"


# The mount's entries


def check_listing(snapshot: Snapshot) -> None:
    """Every listed path must be one the mount can show safely."""
    for file in snapshot.files:
        try:
            check_path(file.path)
        except ManifestError as exc:
            raise SourceError(f"{snapshot.name}: unsafe path in the listing: {exc}") from None
    try:
        check_tree(file.path for file in snapshot.files)
    except ManifestError as exc:
        raise SourceError(f"{snapshot.name}: {exc}") from None


def mount_entries(
    snapshot: Snapshot, manifest: Manifest | None, block_size: int, signed: bool = False
) -> tuple[int, tuple[FileEntry, ...]]:
    """The block size and the file entries of a mount of ``snapshot``.

    With a manifest, a file whose hub sha256 the manifest's entry matches gets the manifest's
    block digests; a file the hub knows only by its Git blob id is verified whole against it
    (the manifest cannot tie its bytes to the commit), and so is a signature (``model.sig``),
    which a manifest never lists. A ``signed`` manifest (one a repository signature covers) is
    the root of trust instead of the listing: every file it describes is served by its
    digests, the Git ones included, so no byte the signature does not cover is served.
    Without a manifest, every file is verified whole. A manifest that names other files, sizes
    or contents is refused.
    """
    files = [file for file in snapshot.files if file.path != MANIFEST_NAME]
    if manifest is None:
        return block_size, tuple(file.pending_entry() for file in files)
    listed = {file.path: file for file in files}
    described = {entry.path: entry for entry in manifest.files}
    problem = _first_mismatch(listed, described)
    if problem is not None:
        raise ManifestError(f"manifest does not match this revision ({snapshot.name}): {problem}")
    entries = []
    for path, file in listed.items():
        entry = described.get(path)
        if entry is None or (file.sha256 is None and not signed):
            entries.append(file.pending_entry())
        else:
            entries.append(entry)
    return manifest.block_size, tuple(entries)


def _first_mismatch(
    listed: Mapping[str, HubFile], described: Mapping[str, FileEntry]
) -> str | None:
    for path in sorted(listed.keys() - described.keys() - {SIGNATURE_NAME}):
        return f"{json.dumps(path)} is not in the manifest"
    for path in sorted(described.keys() - listed.keys()):
        return f"{json.dumps(path)} is not in the repository"
    for path in sorted(listed.keys() & described.keys()):
        file, entry = listed[path], described[path]
        if file.size != entry.size:
            return f"{json.dumps(path)} is {file.size} bytes, the manifest says {entry.size}"
        if file.sha256 is not None and file.sha256 != entry.sha256:
            return f"{json.dumps(path)} has sha256 {file.sha256}, the manifest says {entry.sha256}"
    return None


def git_blob_header(size: int) -> bytes:
    """What Git hashes before a file's bytes to get its blob id."""
    return b"blob %d\x00" % size


def _is_executable_mode(mode: object) -> bool:
    """ModelScope's ``Mode``: Git's octal text ("100755") or its decimal value ("33261")."""
    text = str(mode or "")
    if not text.isdigit():
        return False
    for base in (10, 8):
        try:
            value = int(text, base)
        except ValueError:
            continue
        if value & 0o170000 == 0o100000:
            return bool(value & 0o111)
    return False


def _json_object(body: bytes, where: str) -> dict[str, object]:
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        raise SourceError(f"{where}: the hub's answer is not JSON") from None
    if not isinstance(document, dict):
        raise SourceError(f"{where}: the hub's answer is not a JSON object")
    return document


def _is_size(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_FILE_SIZE


def _timestamp(value: object) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return float(value)
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return None
    return None


def _detail(message: str | None) -> str:
    return f": {_one_line(message)}" if message else ""


def _one_line(text: str) -> str:
    """Text from a hub, fit for one line of ours: whitespace collapsed, control characters
    and length bounded."""
    cleaned = "".join(ch if ch.isprintable() else " " for ch in text)
    return " ".join(cleaned.split())[:200]


def sorted_files(files: Sequence[HubFile]) -> tuple[HubFile, ...]:
    return tuple(sorted(files, key=lambda file: file.path))
