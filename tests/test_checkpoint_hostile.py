"""Hostile checkpoint directories (issue #23): files that are not regular files (/dev/zero,
/dev/urandom, FIFOs), oversized or over-nested JSON, inspect holding every layer to the load's
validation, and save never writing through a symlink. Each case must end in a CheckpointError
naming the file or tensor (or, for save, leave the link's target untouched): never a hang or a
huge allocation. Hangs and allocations of a regression are bounded here (a FIFO writer that
unblocks a stuck reader, an address-space cap around the call), so this file cannot hang or
exhaust the machine when the code is wrong."""
import json
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

import sparseinfer
from sparseinfer.checkpoint import CheckpointError
from checkpoint_models import compressed_mlp, fifo_unblocker, memory_cap, mlp


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    torch.manual_seed(0)
    made = {}
    for name, fmt, save_options in [("csr", "csr", {}), ("2:4", "2:4", {}), ("int8", "int8", {}),
                                    ("pack8", "int8", {"quant_format": "pack-quantized"}),
                                    ("sharded", "csr", {"max_shard_size": 8000})]:
        sparseinfer.save(compressed_mlp(fmt), root / name, **save_options)
        made[name] = root / name
    return made


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def _both(directory):
    """load and inspect of `directory`: each must raise CheckpointError; their messages."""
    messages = []
    for call in (lambda: sparseinfer.load(directory, mlp()), lambda: sparseinfer.inspect(directory)):
        with pytest.raises(CheckpointError) as info:
            call()
        messages.append(str(info.value))
    return messages


# --- item 3: regular files only, JSON size capped, never block --------------------------------

@pytest.mark.parametrize("device", ["/dev/zero", "/dev/urandom"])
@pytest.mark.parametrize("file, source", [("config.json", "csr"), ("model.safetensors.index.json", "sharded")])
def test_json_linked_to_a_device_is_refused(tmp_path, checkpoints, file, source, device):
    directory = _copy(checkpoints[source], tmp_path / "c")
    os.remove(directory / file)
    os.symlink(device, directory / file)
    with memory_cap():
        messages = _both(directory)
    for message in messages:
        assert message.startswith(f"{file}: not a regular file") and "character device" in message, message


@pytest.mark.parametrize("file, source", [("model.safetensors", "csr"), ("config.json", "csr"),
                                          ("model.safetensors.index.json", "sharded"),
                                          ("a shard", "sharded")])
def test_fifo_is_refused_without_blocking(tmp_path, checkpoints, file, source):
    directory = _copy(checkpoints[source], tmp_path / "c")
    if file == "a shard":
        file = sorted(n for n in os.listdir(directory) if n.startswith("model-"))[-1]
    assert os.path.exists(directory / file), sorted(os.listdir(directory))
    os.remove(directory / file)
    os.mkfifo(directory / file)
    with fifo_unblocker(directory / file):
        messages = _both(directory)
    for message in messages:
        assert message.startswith(f"{file}: not a regular file") and "FIFO" in message, message


def test_directory_in_place_of_a_file_is_refused(tmp_path, checkpoints):
    directory = _copy(checkpoints["csr"], tmp_path / "c")
    os.remove(directory / "model.safetensors")
    os.mkdir(directory / "model.safetensors")
    for message in _both(directory):
        assert message.startswith("model.safetensors: not a regular file"), message


def test_oversized_json_is_refused_unread(tmp_path, checkpoints):
    directory = _copy(checkpoints["csr"], tmp_path / "c")
    with open(directory / "config.json", "r+b") as f:
        f.truncate(65 * 2**20)  # sparse: no disk, no memory
    for message in _both(directory):
        assert message.startswith("config.json: 68157440 bytes, more than the 67108864"), message


@pytest.mark.parametrize("depth", [200, 100_000])
def test_deeply_nested_json_is_refused(tmp_path, checkpoints, depth):
    """Issue item 11: a deep config.json raised RecursionError (100000 levels) or loaded (200)."""
    directory = _copy(checkpoints["csr"], tmp_path / "c")
    config = json.loads((directory / "config.json").read_text())
    text = json.dumps(config)[:-1] + ', "deep": ' + '{"a": ' * depth + "1" + "}" * depth + "}"
    (directory / "config.json").write_text(text)
    for message in _both(directory):
        assert message.startswith("config.json: nested"), message


def test_links_to_regular_files_still_load(tmp_path, checkpoints):
    """The Hugging Face cache layout: snapshot files are symlinks to blobs elsewhere."""
    blobs, snapshot = tmp_path / "blobs", tmp_path / "snapshot"
    shutil.copytree(checkpoints["sharded"], blobs)
    snapshot.mkdir()
    for name in os.listdir(blobs):
        os.symlink(blobs / name, snapshot / name)
    x = torch.randn(2, 72)
    expected = sparseinfer.load(blobs, mlp())(x)
    assert torch.equal(sparseinfer.load(snapshot, mlp())(x), expected)
    assert len(sparseinfer.inspect(snapshot).layers) == 3


# --- item 8: inspect runs the load's validation ----------------------------------------------

def _set(key, value):
    return lambda t: t.__setitem__(key, value(t) if callable(value) else value)


INSPECT_CASES = [
    # (checkpoint, edit, what load and inspect must both name)
    ("csr", _set("0.shape", torch.tensor([10**9, 10**9])), r"tensor 0\."),
    ("csr", _set("0.shape", torch.tensor([-130, 72])), r"tensor 0\.shape: weight shape \(-130, 72\)"),
    ("csr", _set("0.shape", torch.tensor([130, -72])), r"tensor 0\.shape: weight shape \(130, -72\)"),
    ("csr", _set("0.compressed", lambda t: t["0.compressed"][:-1].clone()), r"tensor 0\.compressed: .*length"),
    ("csr", _set("0.row_offsets", lambda t: t["0.row_offsets"] + 1), r"tensor 0\.row_offsets"),
    ("2:4", _set("2.compressed", lambda t: t["2.compressed"][:, :-1].clone()), r"tensor 2\.compressed: .*shape"),
    ("int8", _set("2.weight_scale", lambda t: t["2.weight_scale"].index_fill(0, torch.tensor([7]), float("nan"))),
     r"tensor 2\.weight_scale: \[7, 0\] is nan"),
    ("int8", _set("2.weight_scale", lambda t: -t["2.weight_scale"]), r"tensor 2\.weight_scale: \[0, 0\] is -"),
    ("int8", _set("2.weight_scale", torch.ones(64, 3)), r"tensor 2\.weight_scale: shape must be"),
    ("int8", _set("0.weight", lambda t: t["0.weight"].flatten().clone()), r"tensor 0\.weight: must be 2-D int8"),
    ("int8", lambda t: t.pop("4.weight_scale"), r"tensor 4\.weight_scale is missing"),
    ("pack8", _set("0.weight_shape", torch.tensor([10**9, 72])), r"tensor 0\.weight"),
    ("pack8", _set("0.weight_packed", lambda t: t["0.weight_packed"][:, :-1].clone()), r"tensor 0\.weight_packed: 17 int32"),
]


@pytest.mark.parametrize("source, edit, message", INSPECT_CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(INSPECT_CASES)])
def test_inspect_rejects_what_load_rejects(tmp_path, checkpoints, source, edit, message):
    directory = _copy(checkpoints[source], tmp_path / "c")
    path = directory / "model.safetensors"
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path)
    for text in _both(directory):
        assert __import__("re").search(message, text), text


def test_inspect_of_a_huge_stated_shape_reports_no_terabytes(tmp_path, checkpoints):
    """The old inspect reported a 1e9 x 1e9 layer (4 TB dense) from one edited shape tensor."""
    directory = _copy(checkpoints["csr"], tmp_path / "c")
    tensors = load_file(directory / "model.safetensors")
    tensors["0.shape"] = torch.tensor([10**9, 10**9])
    save_file(tensors, directory / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"tensor 0\.(bias|bitmask)"):
        sparseinfer.inspect(directory)


# --- item 9: save replaces files atomically, never writes through a link ---------------------

def _link_all(directory, outside):
    """Replace every file of `directory` by a symlink to a copy in `outside`; their contents."""
    outside.mkdir()
    before = {}
    for name in os.listdir(directory):
        shutil.move(directory / name, outside / name)
        os.symlink(outside / name, directory / name)
        before[name] = (outside / name).read_bytes()
    return before


@pytest.mark.parametrize("save_options", [{}, {"max_shard_size": 8000}], ids=["single", "sharded"])
def test_save_replaces_links_instead_of_writing_through(tmp_path, save_options):
    directory = tmp_path / "c"
    sparseinfer.save(compressed_mlp("csr"), directory, **save_options)
    before = _link_all(directory, tmp_path / "blobs")
    assert "config.json" in before and any(n.endswith(".safetensors") for n in before)
    model = compressed_mlp("int8")
    files = sparseinfer.save(model, directory, **save_options)
    for name, data in before.items():
        assert (tmp_path / "blobs" / name).read_bytes() == data, f"{name}'s link target was written through"
    for name in files:
        assert not os.path.islink(directory / name) and os.path.isfile(directory / name), name
    assert sorted(os.listdir(directory)) == sorted(files)  # no temporary files left behind
    x = torch.randn(2, 72)
    assert torch.equal(sparseinfer.load(directory, mlp())(x), model(x))


def test_failed_save_keeps_the_old_files(tmp_path, monkeypatch):
    directory = tmp_path / "c"
    sparseinfer.save(mlp(), directory)
    before = {n: (directory / n).read_bytes() for n in os.listdir(directory)}
    import sparseinfer.checkpoint.files as files

    def failing(tensors, path, metadata=None):
        with open(path, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")
    monkeypatch.setattr(files, "save_file", failing)
    with pytest.raises(OSError, match="disk full"):
        sparseinfer.save(compressed_mlp("csr"), directory)
    assert {n: (directory / n).read_bytes() for n in os.listdir(directory)} == before


def test_saved_files_have_ordinary_permissions(tmp_path):
    sparseinfer.save(mlp(), tmp_path)
    with open("/proc/self/status") as f:  # os.umask() would change it process-wide to read it
        umask = int(next(line for line in f if line.startswith("Umask:")).split()[1], 8)
    for name in os.listdir(tmp_path):
        assert os.stat(tmp_path / name).st_mode & 0o777 == 0o666 & ~umask, name
