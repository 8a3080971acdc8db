"""Checkpoint files: every kind of damage is one clear CheckpointError naming the file, and
nothing is ever overwritten by a failed save or a failed load."""

from __future__ import annotations

import errno
import os
import pickle
import struct
import time
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

from gradloop.persistence import checkpoint, finding, restore, weights
from gradloop.persistence.checkpoint import CheckpointError, CheckpointWriteError

MARKER = "code-ran.marker"


class Evil:
    """Unpickling this creates MARKER: a stand-in for arbitrary code in a pickle."""

    def __reduce__(self):
        return (open, (os.path.abspath(MARKER), "w"))


def small_state() -> dict:
    torch.manual_seed(0)
    return {"model": {"w": torch.randn(4, 3), "b": torch.full((256,), 7.0)}, "step": 3, "history": [0.5, 0.25]}


def assert_same(a, b) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], dict):
            assert_same(a[key], b[key])
        elif isinstance(a[key], torch.Tensor):
            assert torch.equal(a[key], b[key])
        else:
            assert a[key] == b[key]


@pytest.fixture
def good(tmp_path: Path) -> Path:
    return checkpoint.save(small_state(), tmp_path / "ckpts" / "last.ckpt")


# ----------------------------------------------------------------------------- round trip
def test_round_trip_and_format(good: Path) -> None:
    assert_same(checkpoint.load(good), small_state())
    checkpoint.verify(good)
    assert zipfile.ZipFile(good).comment.endswith(b"GRADLOOP")  # a valid zip; the trailer is its comment
    assert_same(torch.load(good, weights_only=True), small_state())  # plain torch reads it too (unverified)
    assert [p.name for p in good.parent.iterdir()] == ["last.ckpt"]  # no temp file left behind


def test_many_chunks_hash_in_parallel_and_each_is_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(checkpoint, "CHUNK_SIZE", 4096)
    monkeypatch.setattr(checkpoint, "_WRITEBACK_EVERY", 100_000)  # and the background flush runs
    state = {"big": torch.arange(200_000, dtype=torch.float32), "small": torch.ones(3)}
    path = checkpoint.save(state, tmp_path / "big.ckpt")
    assert struct.unpack_from("<I", path.read_bytes(), path.stat().st_size - 56)[0] == 4096
    assert torch.equal(checkpoint.load(path)["big"], state["big"])
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0x10
    path.write_bytes(data)
    with pytest.raises(CheckpointError, match="fails its checksum"):
        checkpoint.verify(path)


@pytest.mark.parametrize("last_chunk", [1, 2, 3])
def test_chunk_boundary_next_to_the_zip_comment_length(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, last_chunk: int) -> None:
    state = {"w": torch.ones(2)}
    payload = checkpoint.save(state, tmp_path / "a.ckpt").stat().st_size - 64
    monkeypatch.setattr(checkpoint, "CHUNK_SIZE", payload - last_chunk)
    path = checkpoint.save(state, tmp_path / "b.ckpt")
    checkpoint.verify(path)
    data = bytearray(path.read_bytes())
    data[payload - 1] ^= 0x01  # inside the zip comment length, in the last chunk
    path.write_bytes(data)
    with pytest.raises(CheckpointError, match="b.ckpt"):
        checkpoint.verify(path)


def test_load_without_mmap_and_a_file_replaced_while_loading(good: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert_same(checkpoint.load(good, mmap=False), small_state())
    real = torch.load

    def replaced_meanwhile(*args, **kwargs):
        state = real(*args, **kwargs)
        checkpoint.save({"other": 1}, good)
        return state

    monkeypatch.setattr(torch, "load", replaced_meanwhile)
    with pytest.raises(CheckpointError, match="last.ckpt' was replaced while it was being loaded"):
        checkpoint.load(good)


# ----------------------------------------------------------------------------- damage
def test_every_flipped_byte_is_caught(tmp_path: Path) -> None:
    path = checkpoint.save({"w": torch.ones(2), "step": 1}, tmp_path / "flip.ckpt")
    original = path.read_bytes()
    missed = []
    fd = os.open(path, os.O_RDWR)
    try:
        for position, byte in enumerate(original):
            os.pwrite(fd, bytes([byte ^ 0x01]), position)
            try:
                checkpoint.verify(path)
                missed.append(position)
            except CheckpointError as err:
                assert "flip.ckpt" in str(err)
            os.pwrite(fd, bytes([byte]), position)
    finally:
        os.close(fd)
    assert missed == [], f"flips not caught at {missed} of {len(original)} bytes"
    checkpoint.verify(path)


def test_flipped_byte_in_tensor_data_fools_torch_but_not_the_checksum(good: Path) -> None:
    data = bytearray(good.read_bytes())
    position = data.index(struct.pack("<f", 7.0) * 64) + 2
    data[position] ^= 0x01
    good.write_bytes(data)
    assert not torch.equal(torch.load(good, weights_only=True)["model"]["b"], torch.full((256,), 7.0))  # torch: fine
    with pytest.raises(CheckpointError, match=r"last.ckpt' fails its checksum: the file is corrupt"):
        checkpoint.load(good)


@pytest.mark.parametrize("keep", [1, 30, 0.5, -64, -65, -1])
def test_truncated(good: Path, keep: float) -> None:
    data = good.read_bytes()
    size = int(len(data) * keep) if isinstance(keep, float) else (keep if keep > 0 else len(data) + keep)
    good.write_bytes(data[:size])
    with pytest.raises(CheckpointError, match=r"last.ckpt' is truncated or corrupt"):
        checkpoint.load(good)


def test_empty_and_missing(tmp_path: Path) -> None:
    (tmp_path / "empty.ckpt").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"empty.ckpt' is empty \(0 bytes\)"):
        checkpoint.load(tmp_path / "empty.ckpt")
    with pytest.raises(CheckpointError, match=r"nope.ckpt' does not exist"):
        checkpoint.load(tmp_path / "nope.ckpt")
    with pytest.raises(CheckpointError, match="is not a regular file"):
        checkpoint.load(tmp_path)


def test_foreign_files(tmp_path: Path) -> None:
    torch.save(nn.Linear(2, 2).state_dict(), tmp_path / "plain.ckpt")
    with pytest.raises(CheckpointError, match=r"plain.ckpt' is a plain torch.save file, not a gradloop checkpoint"):
        checkpoint.load(tmp_path / "plain.ckpt")
    (tmp_path / "notes.ckpt").write_text("hello, this is not a checkpoint at all" * 10)
    with pytest.raises(CheckpointError, match=r"notes.ckpt' is not a gradloop checkpoint"):
        checkpoint.load(tmp_path / "notes.ckpt")


def test_wrong_version(good: Path) -> None:
    data = bytearray(good.read_bytes())
    struct.pack_into("<I", data, len(data) - 16, 2)
    good.write_bytes(data)
    with pytest.raises(
        CheckpointError,
        match=r"last.ckpt' has format version 2 \(written by a newer gradloop\?\); "
        r"this gradloop reads version 1",
    ):
        checkpoint.load(good)


def test_code_in_a_pickle_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / MARKER
    (tmp_path / "raw.ckpt").write_bytes(pickle.dumps({"model": Evil()}))
    torch.save({"model": Evil()}, tmp_path / "torch.ckpt")
    checkpoint.save({"model": Evil()}, tmp_path / "framed.ckpt")  # a valid checksum around the pickle
    assert not marker.exists()
    with pytest.raises(CheckpointError, match=r"raw.ckpt' is not a gradloop checkpoint"):
        checkpoint.load(tmp_path / "raw.ckpt")
    with pytest.raises(CheckpointError, match=r"torch.ckpt' is a plain torch.save file"):
        checkpoint.load(tmp_path / "torch.ckpt")
    with pytest.raises(CheckpointError, match=r"framed.ckpt' passes its checksum but cannot be loaded safely"):
        checkpoint.load(tmp_path / "framed.ckpt")
    assert not marker.exists()


def test_loading_never_writes(tmp_path: Path, good: Path) -> None:
    data = bytearray(good.read_bytes())
    data[100] ^= 0xFF
    good.write_bytes(data)
    before = {p.name: p.read_bytes() for p in good.parent.iterdir()}
    with pytest.raises(CheckpointError):
        checkpoint.load(good)
    assert {p.name: p.read_bytes() for p in good.parent.iterdir()} == before


# ----------------------------------------------------------------------------- failed saves
def test_unwritable_directory_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointWriteError, match=r"cannot write '.*file/ckpts/last.ckpt'") as info:
        checkpoint.save(small_state(), tmp_path / "file" / "ckpts" / "last.ckpt")
    assert isinstance(info.value, OSError) and isinstance(info.value, CheckpointError)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes anywhere")
def test_read_only_directory_is_a_clear_error(tmp_path: Path) -> None:
    directory = tmp_path / "ro"
    directory.mkdir()
    directory.chmod(0o500)
    try:
        with pytest.raises(CheckpointWriteError, match="Permission denied"):
            checkpoint.save(small_state(), directory / "last.ckpt")
    finally:
        directory.chmod(0o700)


@pytest.mark.parametrize("failing", ["write", "fsync", "replace"])
def test_failed_save_leaves_the_previous_checkpoint(good: Path, monkeypatch: pytest.MonkeyPatch, failing: str) -> None:
    before = good.read_bytes()
    real = getattr(os, failing)
    monkeypatch.setattr(checkpoint, "_WRITEBACK_EVERY", 1000)  # the background flush runs too
    written = [0]

    def broken(*args, **kwargs):
        if failing == "write":  # the disk fills up part way
            written[0] += len(args[1])
            if written[0] > 1000:
                raise OSError(errno.ENOSPC, "No space left on device")
            return real(*args, **kwargs)
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, failing, broken)
    with pytest.raises(CheckpointWriteError, match=r"cannot write .*last.ckpt'.*the previous file \(if any\) is intact"):
        checkpoint.save({"model": {"w": torch.zeros(1000)}}, good)
    monkeypatch.undo()
    assert good.read_bytes() == before
    assert [p.name for p in good.parent.iterdir()] == ["last.ckpt"]  # the temp file is gone
    assert_same(checkpoint.load(good), small_state())


def test_a_failed_background_flush_fails_the_save(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fdatasync", broken, raising=False)
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT)
    try:
        with pytest.raises(OSError, match="Input/output error"):
            with checkpoint._Writeback(fd) as writeback:
                writeback.wrote(checkpoint._WRITEBACK_EVERY)
                writeback._thread.join(timeout=10)  # it ends at the error
    finally:
        os.close(fd)


def test_interrupted_save_removes_its_temp_file(good: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(small_state(), good)
    assert [p.name for p in good.parent.iterdir()] == ["last.ckpt"]


def test_temp_files_of_dead_writers_are_removed(good: Path) -> None:
    directory = good.parent
    stale, fresh, busy = (directory / f".last.ckpt.{c * 16}.gradloop-tmp" for c in "abc")
    for path in (stale, fresh, busy):
        path.write_bytes(b"partial")
    old = time.time() - 3600
    os.utime(stale, (old, old))
    os.utime(busy, (old, old))
    import fcntl

    with open(busy, "rb") as holder:  # a live writer holds its temp file locked
        fcntl.flock(holder, fcntl.LOCK_EX)
        checkpoint.save(small_state(), good)
    assert sorted(p.name for p in directory.iterdir()) == sorted([busy.name, fresh.name, "last.ckpt"])
    assert finding.latest(directory) == good  # temp files are never taken for checkpoints


def test_symlink_at_the_target_is_replaced_not_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("keep me")
    (tmp_path / "ckpts").mkdir()
    target = tmp_path / "ckpts" / "last.ckpt"
    target.symlink_to(outside)
    checkpoint.save(small_state(), target)
    assert outside.read_text() == "keep me" and not target.is_symlink()
    checkpoint.verify(target)


@pytest.mark.parametrize("name", ["", ".", "..", "../x.ckpt", "a/b.ckpt", ".hidden.ckpt", "x\x00.ckpt"])
def test_names_that_could_leave_the_directory_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError, match="must be a plain file name"):
        checkpoint.path_in(tmp_path, name)


# ----------------------------------------------------------------------------- finding
def test_latest_skips_a_broken_newer_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert finding.latest(tmp_path / "missing") is None
    assert finding.latest(tmp_path) is None
    older = checkpoint.save(small_state(), tmp_path / "epoch-0-step-3.ckpt")
    newer = checkpoint.save({"step": 4}, tmp_path / "last.ckpt")
    (tmp_path / ".last.ckpt.0123456789abcdef.gradloop-tmp").write_bytes(b"partial")
    (tmp_path / "notes.txt").write_text("ignored")
    os.utime(older, (1000, 1000))
    assert finding.latest(tmp_path) == newer
    newer.write_bytes(newer.read_bytes()[:-10])
    assert finding.latest(tmp_path) == older
    assert "skipping a broken checkpoint" in capsys.readouterr().err
    path, state = finding.load_latest(tmp_path)
    assert path == older and state["step"] == 3


def test_latest_with_every_file_broken_names_them_all(tmp_path: Path) -> None:
    (tmp_path / "last.ckpt").write_bytes(b"")
    (tmp_path / "best.ckpt").write_text("junk")
    with pytest.raises(CheckpointError, match=r"no checkpoint in .* can be used: .*(last|best).ckpt.*(best|last).ckpt"):
        finding.latest(tmp_path)


def test_link_shares_the_file_or_copies_it(good: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    best = checkpoint.link(good, good.with_name("best.ckpt"))
    assert os.path.samefile(best, good)
    monkeypatch.setattr(os, "link", lambda *a, **k: (_ for _ in ()).throw(OSError(errno.EPERM, "not supported")))
    copy = checkpoint.link(good, good.with_name("epoch-1-step-2.ckpt"))
    assert not os.path.samefile(copy, good) and copy.read_bytes() == good.read_bytes()


# ----------------------------------------------------------------------------- another model
def test_checkpoint_of_another_model(tmp_path: Path) -> None:
    state = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2)).state_dict()
    with pytest.raises(
        CheckpointError,
        match=r"'x.ckpt' holds weights of a different model \(missing: 2.weight, 2.bias; "
        r"unexpected: 1.weight, 1.bias; different shapes: 0.weight \(4, 3\) in the file, "
        r"\(5, 3\) in the model",
    ):
        restore.load_model_state(nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2)), state, "x.ckpt")
    model = nn.Linear(3, 4)
    restore.load_model_state(model, {"weight": torch.ones(4, 3), "bias": torch.zeros(4)}, "x.ckpt")
    assert torch.equal(model.weight, torch.ones(4, 3))
    other = torch.optim.Adam(nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2)).parameters()).state_dict()
    with pytest.raises(CheckpointError, match=r"'x.ckpt' holds optimizer state that does not fit this optimizer \(Adam\)"):
        restore.load_optimizer_state(torch.optim.Adam(model.parameters()), other, "x.ckpt")


def test_weights_round_trip_and_errors(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    path = weights.export_weights(model, tmp_path / "model.safetensors")
    fresh = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    import gradloop as gl

    gl.load_weights(fresh, path)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), fresh.state_dict().values()))
    with pytest.raises(CheckpointError, match=r"model.safetensors' holds weights of a different model"):
        gl.load_weights(nn.Linear(3, 4), path)
    with pytest.raises(CheckpointError, match=r"nope.safetensors' does not exist"):
        gl.load_weights(fresh, tmp_path / "nope.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(path.read_bytes()[:20])
    with pytest.raises(CheckpointError, match=r"bad.safetensors' is not a readable safetensors file"):
        gl.load_weights(fresh, tmp_path / "bad.safetensors")
