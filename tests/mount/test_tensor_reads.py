"""Model-aware reads on real mounts: a read inside a tensor fetches that tensor's blocks,
read-ahead follows loader order across shards, prefetch goes in loader order, models load from
the mount exactly as from disk (also from four page-faulting threads at once), and a file whose
header is not one is read as plain blocks. The origin's access log says what was fetched."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import gguf
import numpy as np
import pytest
from safetensors.numpy import save_file

from lazyfs.core.loaderorder import ENTERED_BYTES, INDEX_SUFFIX
from lazyfs.core.tensormap import Tensor, TensorMap, natural_key, parse_tensor_map
from tests.faultproxy import Faults, fault_proxy
from tests.mounts import Mounter, lazyfs, publish
from tests.origins import Origin, start_nginx_origin
from tests.waiting import wait_until

KIB = 1024
BLOCK = 64 * KIB
SHARDS = ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors")
INDEX = "model" + INDEX_SUFFIX


@pytest.fixture
def nginx_origin(origin_root: Path, tmp_path: Path) -> Iterator[Origin]:
    served = start_nginx_origin(origin_root, tmp_path / "nginx")
    try:
        yield served
    finally:
        served.stop()


def tensor_map(path: Path) -> TensorMap:
    data = path.read_bytes()
    found = parse_tensor_map(path.name, data, len(data))
    assert isinstance(found, TensorMap)
    return found


def write_sharded_model(root: Path, layers: int = 8, floats: int = 40_000) -> dict[str, str]:
    """Two shards with the layers alternating between them (natural order goes back and forth
    between the files, and differs from each file's own order: layers.10 sorts before layers.2
    in a file); an index. Returns the weight map."""
    rng = np.random.default_rng(7)
    weight_map = {}
    for number, shard in enumerate(SHARDS):
        tensors = {}
        for layer in range(number, layers, 2):
            for part in ("attn", "mlp"):
                name = f"model.layers.{layer}.{part}.weight"
                tensors[name] = rng.standard_normal(floats + 97 * layer, dtype=np.float32)
                weight_map[name] = shard
        save_file(tensors, root / shard, metadata={"format": "np"})
    (root / INDEX).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return weight_map


def blocks_of(tensor: Tensor, block: int = BLOCK) -> set[int]:
    return set(range(tensor.start // block, (tensor.end - 1) // block + 1))


def fetched(origin: Origin, name: str, block: int = BLOCK) -> list[int]:
    """The blocks of ``name`` the origin was asked for, in the order asked."""
    return [
        int(record.range.split("=")[1].split("-")[0]) // block
        for record in origin.requests()
        if record.path == f"/{name}" and record.range
    ]


def settled(mountpoint: Path) -> bool:
    report = json.loads(lazyfs("status", mountpoint, "--json").stdout)
    return report["fetches_in_flight"] == 0


def read_exactly(path: Path, offset: int, length: int) -> bytes:
    """``length`` bytes at ``offset``, the kernel reading no more than asked (its own
    read-ahead would run on past them)."""
    with open(path, "rb", buffering=0) as reader:
        os.posix_fadvise(reader.fileno(), 0, 0, os.POSIX_FADV_RANDOM)
        return os.pread(reader.fileno(), length, offset)


@pytest.mark.parametrize("tensor_aware", [True, False])
def test_a_loader_in_a_tensor_gets_exactly_that_tensors_blocks_fetched(
    origin_root: Path, nginx_origin: Origin, mounter: Mounter, tensor_aware: bool
) -> None:
    rng = np.random.default_rng(3)
    # Tensors larger than what the kernel reads ahead (see ENTERED_BYTES).
    tensors = {f"t{n}": rng.standard_normal(1_200_000, dtype=np.float32) for n in range(4)}
    save_file(tensors, origin_root / "model.safetensors")
    publish(origin_root, "64K")
    local = (origin_root / "model.safetensors").read_bytes()
    found = tensor_map(origin_root / "model.safetensors")
    flags = ["--tensor-aware"] if tensor_aware else ["--no-tensor-aware", "--read-ahead", "0"]
    mountpoint, _ = mounter.mount(nginx_origin.url, *flags)
    path = mountpoint / "model.safetensors"
    wanted = found.tensors[2]
    # A touch of one page is no loader in the tensor (the kernel's read-ahead touches the
    # next tensor that much): only that page's block.
    assert read_exactly(path, wanted.start, 4096) == local[wanted.start : wanted.start + 4096]
    assert wait_until(lambda: settled(mountpoint))
    header = {0} if tensor_aware else set()
    assert set(fetched(nginx_origin, "model.safetensors")) == header | {wanted.start // BLOCK}
    # Reading on into it, past what the kernel would read ahead: now the rest of its blocks
    # come at once, and no block of any other tensor.
    part = ENTERED_BYTES + 16 * KIB
    assert read_exactly(path, wanted.start, part) == local[wanted.start : wanted.start + part]
    assert wait_until(lambda: settled(mountpoint))
    got = set(fetched(nginx_origin, "model.safetensors")) - {0}
    read = set(range(wanted.start // BLOCK, (wanted.start + part - 1) // BLOCK + 1))
    if tensor_aware:
        assert got == blocks_of(wanted)
    else:
        # Model-blind (and no read-ahead): only the blocks read.
        assert got == read
    assert read < blocks_of(wanted)


def test_read_ahead_follows_loader_order_across_shards(
    origin_root: Path, nginx_origin: Origin, mounter: Mounter
) -> None:
    # Tensors large enough to tell a loader from the kernel's read-ahead (ENTERED_BYTES),
    # and blocks large enough for a whole one in read-ahead's window.
    weight_map = write_sharded_model(origin_root, layers=4, floats=ENTERED_BYTES // 4 + 50_000)
    publish(origin_root, "1M")
    block = 1024 * KIB
    maps = {shard: tensor_map(origin_root / shard) for shard in SHARDS}
    mountpoint, _ = mounter.mount(nginx_origin.url)
    # Opening the index reads both shards' headers.
    json.loads((mountpoint / INDEX).read_bytes())
    assert wait_until(lambda: all(0 in fetched(nginx_origin, shard, block) for shard in SHARDS))
    nginx_origin.clear_log()
    names = sorted(weight_map, key=natural_key)

    def place(name: str) -> tuple[str, Tensor]:
        shard = weight_map[name]
        return shard, next(t for t in maps[shard].tensors if t.name == name)

    def load(name: str) -> None:
        shard, tensor = place(name)
        assert len(read_exactly(mountpoint / shard, tensor.start, tensor.end - tensor.start))

    def asked_of(shard: str) -> set[int]:
        return set(fetched(nginx_origin, shard, block))

    # A loader reads layers.0's two tensors (shard 1) in order...
    for name in names[:2]:
        load(name)
    # ...so the next one in loader order, in shard 2, is fetched before anyone reads it (its
    # block 0 came with the header), and nothing else of shard 2 is: one tensor ahead, after
    # two read in order.
    next_shard, next_tensor = place(names[2])
    assert next_shard == SHARDS[1]
    wanted = blocks_of(next_tensor, block) - {0}
    assert wait_until(lambda: wanted <= asked_of(SHARDS[1]))
    assert wait_until(lambda: settled(mountpoint))
    assert asked_of(SHARDS[1]) == wanted
    # A third tensor in order: the window doubles, to the next two in loader order (one in
    # each shard), and still nothing of layers.3 (shard 2) beyond a block it shares.
    load(names[2])
    assert wait_until(lambda: settled(mountpoint))
    following = [place(name) for name in names[3:5]]
    assert [shard for shard, _ in following] == [SHARDS[1], SHARDS[0]]
    assert blocks_of(following[0][1], block) <= asked_of(SHARDS[1])
    assert blocks_of(following[1][1], block) <= asked_of(SHARDS[0])
    later = [place(name)[1] for name in names[5:] if weight_map[name] == SHARDS[1]]
    assert later
    shared = blocks_of(following[0][1], block)
    assert not (set().union(*(blocks_of(t, block) for t in later)) - shared) & asked_of(SHARDS[1])


# Loads every tensor of the model at argv[1] (shards mapped, as safe_open does) from four
# threads, comparing each with the copy at argv[2]; exit 3 on a wrong byte.
FOUR_THREAD_LOADER = """
import sys, threading
import gguf
import numpy as np
from safetensors import safe_open
mounted, local, names = sys.argv[1], sys.argv[2], sys.argv[3:]
wrong, failed = [], []
def load(part):
    try:
        for entry in names[part::4]:
            shard, name = entry.split(":")
            with safe_open(f"{local}/{shard}", "numpy") as want:
                expected = want.get_tensor(name)
            with safe_open(f"{mounted}/{shard}", "numpy") as got:
                if not np.array_equal(got.get_tensor(name), expected):
                    wrong.append(name)
    except Exception as exc:
        failed.append(repr(exc))
threads = [threading.Thread(target=load, args=(part,)) for part in range(4)]
for thread in threads: thread.start()
for thread in threads: thread.join()
print(failed, file=sys.stderr)
sys.exit(3 if wrong else 1 if failed else 0)
"""


def load_in_four_threads(
    mountpoint: Path, local: Path, weight_map: dict[str, str], timeout: float
) -> subprocess.CompletedProcess[str]:
    names = [f"{weight_map[name]}:{name}" for name in sorted(weight_map, key=natural_key)]
    return subprocess.run(
        [sys.executable, "-c", FOUR_THREAD_LOADER, str(mountpoint), str(local), *names],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_page_faults_through_a_hostile_origin_load_exact_bytes(
    origin_root: Path, nginx_origin: Origin, mounter: Mounter
) -> None:
    weight_map = write_sharded_model(origin_root, layers=12)
    publish(origin_root, "64K")
    faults = Faults(flip=0.1, reset=0.05, status_503=0.05, truncate=0.05, ignore_range=0.05)
    with fault_proxy(nginx_origin.url, faults, seed=12) as proxy:
        mountpoint, _ = mounter.mount(proxy.url, "--retries", "8", "--timeout", "2")
        result = load_in_four_threads(mountpoint, origin_root, weight_map, timeout=240)
        assert result.returncode == 0, result.stderr[-2000:]
        assert sum(proxy.injected.values()) > 0


def test_a_page_fault_on_a_stalled_origin_fails_within_the_deadline_and_never_hangs(
    origin_root: Path, nginx_origin: Origin, mounter: Mounter
) -> None:
    weight_map = write_sharded_model(origin_root)
    publish(origin_root, "64K")
    with fault_proxy(nginx_origin.url) as proxy:
        mountpoint, _ = mounter.mount(proxy.url, "--deadline", "1", "--timeout", "0.5")
        # Shard 2's tensors never come: a loader faulting on them gets EIO (SIGBUS on a
        # mapping) once the deadline has passed (a few times over: the kernel asks again,
        # page by page, before it gives up on a fault), not a hang.
        proxy.hold(
            lambda path, range_header: path.endswith(SHARDS[1]) and range_header != "bytes=0-65535"
        )
        try:
            result = load_in_four_threads(mountpoint, origin_root, weight_map, timeout=60)
        finally:
            proxy.release_held()
        assert result.returncode in (-signal.SIGBUS, 1), result.stderr[-2000:]
        # The mount still serves shard 1 exactly, and shard 2 too once its origin answers.
        assert load_in_four_threads(mountpoint, origin_root, weight_map, 120).returncode == 0


def test_prefetch_goes_in_loader_order_after_the_headers(
    origin_root: Path, nginx_origin: Origin, mounter: Mounter
) -> None:
    write_sharded_model(origin_root)
    publish(origin_root, "64K")
    maps = {shard: tensor_map(origin_root / shard) for shard in SHARDS}
    mountpoint, _ = mounter.mount(nginx_origin.url)
    nginx_origin.clear_log()
    result = lazyfs("prefetch", mountpoint)
    assert result.returncode == 0, result.stderr
    # Where each block comes in loader order: headers (block 0 of each shard) first.
    expected: dict[tuple[str, int], int] = {}
    for shard in SHARDS:
        expected.setdefault((shard, 0), len(expected))
    placed = sorted(
        ((shard, tensor) for shard in SHARDS for tensor in maps[shard].tensors),
        key=lambda item: natural_key(item[1].name),
    )
    for shard, tensor in placed:
        for block in sorted(blocks_of(tensor)):
            expected.setdefault((shard, block), len(expected))
    block_gets = nginx_origin.requests(
        len(expected), where=lambda r: r.path.lstrip("/") in SHARDS and bool(r.range)
    )
    asked = [
        expected[(record.path.lstrip("/"), int(record.range.split("=")[1].split("-")[0]) // BLOCK)]
        for record in block_gets
        if record.range
    ]
    assert sorted(asked) == list(range(len(expected)))
    # Four workers finish out of order, but never far from the order they were handed.
    assert all(position >= max(asked[:at], default=0) - 8 for at, position in enumerate(asked))


def test_a_gguf_file_reads_as_llama_cpp_maps_it_and_its_tensors_are_fetched_whole(
    origin_root: Path, nginx_origin: Origin, mounter: Mounter
) -> None:
    rng = np.random.default_rng(11)
    writer = gguf.GGUFWriter(origin_root / "model.gguf", "llama")
    writer.add_block_count(3)
    writer.add_token_list([f"token{n}" for n in range(500)])
    for layer in range(3):
        ffn = rng.standard_normal((1200, 1000), np.float32)  # larger than ENTERED_BYTES
        writer.add_tensor(f"blk.{layer}.ffn.weight", ffn)
        writer.add_tensor(f"blk.{layer}.norm.weight", rng.standard_normal(300).astype(np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    publish(origin_root, "64K")
    found = tensor_map(origin_root / "model.gguf")
    mountpoint, _ = mounter.mount(nginx_origin.url)
    # A loader in the middle tensor: all of its blocks come, nothing of the others'.
    wanted = next(t for t in found.tensors if t.name == "blk.1.ffn.weight")
    read_exactly(mountpoint / "model.gguf", wanted.start, ENTERED_BYTES + 16 * KIB)
    assert wait_until(lambda: settled(mountpoint))
    assert set(fetched(nginx_origin, "model.gguf")) - {0, 1} == blocks_of(wanted) - {0, 1}
    # Mapped and read through front to back as llama.cpp does: every tensor exact.
    mounted = gguf.GGUFReader(mountpoint / "model.gguf")
    local = gguf.GGUFReader(origin_root / "model.gguf")
    assert [t.name for t in mounted.tensors] == [t.name for t in local.tensors]
    for got, want in zip(mounted.tensors, local.tensors, strict=True):
        assert np.array_equal(got.data, want.data), got.name


def test_a_file_whose_header_is_not_one_is_read_as_plain_blocks(
    origin_root: Path, nginx_origin: Origin, mounter: Mounter
) -> None:
    rng = np.random.default_rng(5)
    bad = bytearray(rng.bytes(300 * KIB))
    bad[:8] = (2**60).to_bytes(8, "little")  # a header longer than the file
    (origin_root / "bad.safetensors").write_bytes(bytes(bad))
    worse = b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all" + rng.bytes(200 * KIB)
    (origin_root / "worse.safetensors").write_bytes(worse)
    (origin_root / "noise.gguf").write_bytes(b"GGUF\x03\x00\x00\x00" + b"\xff" * 100 * KIB)
    publish(origin_root, "64K")
    mountpoint, _ = mounter.mount(nginx_origin.url)
    for name in ("bad.safetensors", "worse.safetensors", "noise.gguf"):
        assert (mountpoint / name).read_bytes() == (origin_root / name).read_bytes()
    assert wait_until(lambda: mounter.log_text().count("read as plain blocks") >= 3)
    assert "Traceback" not in mounter.log_text()


def test_a_corrupt_block_inside_a_tensor_fails_the_read_and_never_serves_it(
    origin_root: Path, nginx_origin: Origin, mounter: Mounter
) -> None:
    rng = np.random.default_rng(9)
    tensors = {f"t{n}": rng.standard_normal(100_000, dtype=np.float32) for n in range(3)}
    save_file(tensors, origin_root / "model.safetensors")
    publish(origin_root, "64K")
    path = origin_root / "model.safetensors"
    good = path.read_bytes()
    broken = tensor_map(path).tensors[1]
    # The origin now serves a wrong byte in the middle of tensor 1 (its last block but one).
    spoiled = bytearray(good)
    spoiled[broken.end - BLOCK] ^= 0xFF
    path.write_bytes(bytes(spoiled))
    mountpoint, _ = mounter.mount(nginx_origin.url, "--retries", "1")
    with open(mountpoint / "model.safetensors", "rb") as reader:
        reader.seek(broken.start)
        with pytest.raises(OSError) as failed:
            reader.read(broken.end - broken.start)
        assert failed.value.errno == 5
        first = tensor_map(origin_root / "model.safetensors").tensors[0]
        reader.seek(first.start)
        assert reader.read(first.end - first.start) == good[first.start : first.end]
    assert re.search(r"model\.safetensors.*(digest|verif)", mounter.log_text())
