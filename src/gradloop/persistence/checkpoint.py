"""Checkpoint files: atomic write, checksum, safe load; safetensors export of weights.

File format (version 1). A checkpoint is the zip archive that `torch.save` writes, with a 64-byte
gradloop trailer stored as the archive's comment, so the file stays a valid zip (and a valid
`torch.load` input, unverified) while gradloop can check every byte of it:

    [ torch.save zip ... end-of-central-directory record (comment length = 64) ][ trailer ]

    trailer (little-endian): u64 payload size | u32 chunk size | u32 checksum algorithm (2)
                             | 32 bytes tree digest | u32 version | u32 trailer size (64)
                             | 8 bytes magic b"GRADLOOP"

The digest is a tree: the payload (the zip, as torch wrote it, i.e. with comment length 0) is cut
into `chunk size` pieces, each gets a CRC-32, and the digest is the SHA-256 of a domain tag, the
payload size, the chunk size and the chunk CRCs. It catches accidental damage (flipped bits,
truncation, a torn write), which is what a checksum inside the file can protect against; it is not
a signature. CRC-32 rather than SHA-256 per chunk because SHA-256 (~1.3 GB/s per core) costs more
than a whole plain torch.load of the same state (measured in bench/checkpoint.py); a tree because
its chunks hash on all cores at once. Saving streams
torch.save's output through a writer that hashes while it writes (one pass, no in-memory copy of
the payload, torch's own per-record CRC-32 switched off); loading hashes a map of the file with all
cores, then maps it (`torch.load(mmap=True, weights_only=True)`): no code is ever unpickled and no
unverified byte is used. The magic and version sit at the very end, where a truncated file loses
them: it reads as truncated, never as a checkpoint.

Writes are atomic: an exclusively created temporary file in the target directory (no symlink is
followed), flushed and fsynced, renamed over the target, then the directory is fsynced. A crash
at any moment leaves the previous file intact; a temporary file left by a killed writer is never
taken for a checkpoint and is removed by a later save.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import mmap as _mmap
import os
import re
import secrets
import struct
import sys
import threading
import time
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import torch
from torch import nn

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

VERSION = 1
MAGIC = b"GRADLOOP"
CHUNK_SIZE = 1 << 20  # small enough that a single 4 MB tensor is already hashed by several threads
SUFFIX = ".ckpt"
_TRAILER = struct.Struct("<QII32sII8s")  # payload size, chunk size, algorithm, digest, version, trailer size, magic
# The checksum algorithm is a field of its own, so that another could come without a new version.
# (1 was a SHA-256 tree, never released: 2x slower to save than a plain torch.save.)
CRC32_TREE = 2  # CRC-32 per chunk, SHA-256 over the chunk CRCs
_TAIL = struct.Struct("<II8s")  # version, trailer size, magic: the part every version keeps
_EOCD = b"PK\x05\x06"  # zip end-of-central-directory signature; the record is 22 bytes
_EOCD_SIZE = 22
_TREE_TAG = b"gradloop-sha256-tree\x00"
_TEMP = re.compile(r"^\..+\.[0-9a-f]{16}\.gradloop-tmp$")
_STALE_TEMP_AGE_S = 10.0  # a temp file this old and unlocked belongs to a writer that died
_CHUNKS_PER_TASK = 16  # verification hands out this many chunks at a time to each thread
_COPY_BLOCK = 16 << 20
_WRITEBACK_EVERY = 128 << 20
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing, truncated, corrupt, foreign or incompatible."""


class CheckpointWriteError(CheckpointError, OSError):
    """A checkpoint that could not be written (unwritable directory, disk full, ...)."""

    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno  # type: ignore[misc]


# --------------------------------------------------------------------------------- names
def path_in(directory: str | os.PathLike[str], name: str) -> Path:
    """`directory / name` for a file name made by gradloop; refuses anything that could leave `directory`."""
    if (not name or name in (".", "..") or name.startswith(".") or "\x00" in name
            or os.sep in name or (os.altsep is not None and os.altsep in name)):
        raise ValueError(f"checkpoint name {name!r} must be a plain file name (no path separators, not hidden)")
    return Path(directory) / name


# --------------------------------------------------------------------------------- saving
def save(state: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Writes `state` (anything `torch.load(weights_only=True)` can read back) to `path`, atomically."""
    path = Path(path)
    if not path.name or _TEMP.match(path.name):
        raise ValueError(f"{str(path)!r} is not a usable checkpoint file name")

    def fill(fd: int) -> None:
        with _Hasher() as hasher, _Writeback(fd) as writeback:
            writer = _HashingWriter(fd, hasher, writeback)
            try:
                with _zip_crc32_off():
                    torch.save(dict(state), writer)
            except Exception:
                if writer.error is not None:  # torch reports a failed write as its own RuntimeError
                    raise writer.error from None
                raise
            writer.finish()

    _atomic_write(path, fill)
    return path


class _TreeHash:
    """The tree digest, fed in order; `split` cuts incoming bytes at chunk boundaries."""

    def __init__(self, chunk_size: int | None = None) -> None:
        self.chunk_size = chunk_size or CHUNK_SIZE
        self.size = 0
        self._chunks: list[Any] = [_Crc32()]
        self._filled = 0

    def split(self, data: memoryview) -> list[tuple[Any, memoryview]]:
        """(hasher, piece) pairs covering `data`; each hasher must get its piece before the next `split`."""
        pieces, offset = [], 0
        while offset < len(data):
            take = min(self.chunk_size - self._filled, len(data) - offset)
            pieces.append((self._chunks[-1], data[offset:offset + take]))
            offset += take
            self._filled += take
            if self._filled == self.chunk_size:
                self._chunks.append(_Crc32())
                self._filled = 0
        self.size += len(data)
        return pieces

    def digest(self) -> bytes:
        chunks = self._chunks if self._filled else self._chunks[:-1]
        return _tree_root(self.size, self.chunk_size, [c.digest() for c in chunks])


class _Crc32:
    """zlib.crc32 with hashlib's update/digest (releases the GIL like hashlib does)."""

    def __init__(self, data: Any = b"") -> None:
        self.value = zlib.crc32(data)

    def update(self, data: Any) -> None:
        self.value = zlib.crc32(data, self.value)

    def digest(self) -> bytes:
        return self.value.to_bytes(4, "little")


def _tree_root(size: int, chunk_size: int, digests: list[bytes]) -> bytes:
    return hashlib.sha256(_TREE_TAG + struct.pack("<QI", size, chunk_size) + b"".join(digests)).digest()


class _Hasher:
    """Worker threads for hashing; started only when there is enough data to share out."""

    def __init__(self) -> None:
        self._pool: ThreadPoolExecutor | None = None

    def __enter__(self) -> "_Hasher":
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(_workers(), thread_name_prefix="gradloop-hash")
        return self._pool.submit(fn, *args)


def _workers() -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cores, 8))


class _HashingWriter:
    """The file object torch.save writes into: bytes go to disk while worker threads hash them.

    torch hands `write` a view of the tensor's own memory, valid only during the call, so each
    call waits for its hashes; for a large tensor the write and the hashing overlap.
    """

    def __init__(self, fd: int, hasher: _Hasher, writeback: "_Writeback") -> None:
        self.fd, self.hasher, self.writeback = fd, hasher, writeback
        self.tree = _TreeHash()
        self.tail = b""
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        if self.error is not None:
            raise self.error
        try:
            return self._write(memoryview(data).cast("B"))
        except OSError as err:
            self.error = err
            raise

    def _write(self, view: memoryview) -> int:
        pieces = self.tree.split(view)
        if len(pieces) < 3:
            for chunk, piece in pieces:
                chunk.update(piece)
            _write_all(self.fd, view)
        else:
            futures = [self.hasher.submit(chunk.update, piece) for chunk, piece in pieces]
            try:
                _write_all(self.fd, view)
            finally:  # `view` may be freed once we return, even when the write failed
                for future in futures:
                    future.result()
        self.tail = (self.tail + bytes(view[-_EOCD_SIZE:]))[-_EOCD_SIZE:]
        self.writeback.wrote(len(view))
        return len(view)

    def flush(self) -> None:
        pass

    def seek(self, *args: Any) -> int:
        raise io.UnsupportedOperation("gradloop checkpoints are written sequentially")

    def finish(self) -> None:
        """Sets the zip comment length to the trailer's size and appends the trailer."""
        tail = self.tail
        if len(tail) != _EOCD_SIZE or not tail.startswith(_EOCD) or tail[-2:] != b"\x00\x00":
            raise CheckpointError("torch.save wrote a zip archive gradloop does not recognize; cannot add the checksum")
        os.pwrite(self.fd, struct.pack("<H", _TRAILER.size), self.tree.size - 2)
        trailer = _TRAILER.pack(self.tree.size, self.tree.chunk_size, CRC32_TREE, self.tree.digest(), VERSION, _TRAILER.size, MAGIC)
        _write_all(self.fd, memoryview(trailer))


class _Writeback:
    """Flushes written data to disk in a background thread while serialization goes on.

    Without it the final fsync writes the whole file after the fact (for 1.2 GB, as long as the
    serialization itself); with it only the last few hundred MB are left when fsync comes.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._pending = 0
        self._wake = threading.Event()
        self._done = False
        self._thread: threading.Thread | None = None
        self._error: OSError | None = None

    def __enter__(self) -> "_Writeback":
        return self

    def wrote(self, n: int) -> None:
        self._pending += n
        if self._pending < _WRITEBACK_EVERY:
            return
        self._pending = 0
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="gradloop-writeback", daemon=True)
            self._thread.start()
        self._wake.set()

    def _run(self) -> None:
        sync = getattr(os, "fdatasync", os.fsync)
        while True:
            self._wake.wait()
            self._wake.clear()
            if self._done:
                return
            try:
                sync(self.fd)
            except OSError as err:  # reported by __exit__; the final fsync would fail the same way
                self._error = err
                return

    def __exit__(self, *exc: Any) -> None:
        if self._thread is not None:
            self._done = True
            self._wake.set()
            self._thread.join()
        if self._error is not None and exc[0] is None:
            raise self._error


@contextlib.contextmanager
def _zip_crc32_off() -> Iterator[None]:
    """Skips torch.save's CRC-32 of every record: the tree checksum covers every byte already, and
    the CRC would cost a third of a save. torch.load does not read it (torch's own option)."""
    try:
        from torch.utils.serialization import config
    except ImportError:  # older torch: always computes it
        yield
        return
    old = config.save.compute_crc32
    config.save.compute_crc32 = False
    try:
        yield
    finally:
        config.save.compute_crc32 = old


def _write_all(fd: int, data: memoryview) -> None:
    while len(data):
        data = data[os.write(fd, data):]


def _atomic_write(path: Path, fill: Callable[[int], None]) -> None:
    """Creates a temp file in `path`'s directory, `fill`s it, fsyncs, renames it to `path`, fsyncs the directory."""
    with _directory(path) as dir_fd:
        _remove_stale_temps(dir_fd)
        temp = _temp_name(path.name)
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_NOFOLLOW | _O_CLOEXEC, 0o666, dir_fd=dir_fd)
        try:
            if fcntl is not None:  # marks the temp as in use, for _remove_stale_temps in other processes
                fcntl.flock(fd, fcntl.LOCK_EX)
            fill(fd)
            os.fsync(fd)
            os.replace(temp, path.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp, dir_fd=dir_fd)
            raise
        finally:
            os.close(fd)
        os.fsync(dir_fd)


def link(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> Path:
    """Gives the committed file `source` a second name `target` (a hard link), atomically.

    Where hard links are not supported (some network and FAT file systems) `target` is an atomic copy.
    """
    source, target = Path(source), Path(target)
    path_in(target.parent, target.name)
    try:
        with _directory(target) as dir_fd:
            temp = _temp_name(target.name)
            os.link(source, temp, dst_dir_fd=dir_fd, follow_symlinks=False)
            try:
                os.replace(temp, target.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(temp, dir_fd=dir_fd)
                raise
            os.fsync(dir_fd)
        return target
    except CheckpointWriteError as err:
        if err.errno not in _NO_LINKS:
            raise
    _atomic_write(target, lambda fd: _copy_into(source, fd))
    return target


_NO_LINKS = {errno.EPERM, errno.EXDEV, errno.EMLINK, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP}


def _copy_into(source: Path, fd: int) -> None:
    with open(source, "rb") as handle:
        while block := handle.read(_COPY_BLOCK):
            _write_all(fd, memoryview(block))


@contextlib.contextmanager
def _directory(path: Path) -> Iterator[int]:
    """An open descriptor of `path`'s directory (created if missing); OSErrors become CheckpointWriteError."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        dir_fd = os.open(path.parent, os.O_RDONLY | _O_DIRECTORY | _O_CLOEXEC)
    except OSError as err:
        raise _write_error(path, err) from err
    try:
        yield dir_fd
    except CheckpointWriteError:
        raise
    except OSError as err:
        raise _write_error(path, err) from err
    finally:
        os.close(dir_fd)


def _temp_name(name: str) -> str:
    return f".{name}.{secrets.token_hex(8)}.gradloop-tmp"


def _write_error(path: Path, err: OSError) -> CheckpointWriteError:
    if isinstance(err, CheckpointWriteError):
        return err
    reason = err.strerror or str(err)
    return CheckpointWriteError(f"cannot write {str(path)!r}: {reason}; the previous file (if any) is intact", err.errno)


def _remove_stale_temps(dir_fd: int) -> None:
    """Deletes temp files of writers that died (killed mid-save): unlocked and not brand new."""
    if fcntl is None:
        return
    for entry in os.scandir(dir_fd):
        if not _TEMP.match(entry.name):
            continue
        try:
            fd = os.open(entry.name, os.O_RDONLY | _O_NOFOLLOW | _O_CLOEXEC, dir_fd=dir_fd)
        except OSError:
            continue
        try:
            if time.time() - os.fstat(fd).st_mtime < _STALE_TEMP_AGE_S:
                continue  # could be a writer between creating and locking it
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.unlink(entry.name, dir_fd=dir_fd)
        except OSError:
            continue  # locked: a live writer
        finally:
            os.close(fd)


# --------------------------------------------------------------------------------- loading
def verify(path: str | os.PathLike[str]) -> None:
    """Checks that `path` is a complete gradloop checkpoint whose every byte matches its checksum."""
    with _verified(Path(path)):
        pass


def load(path: str | os.PathLike[str], map_location: Any = "cpu", *, mmap: bool = True) -> dict[str, Any]:
    """Verifies and loads a checkpoint without unpickling code; raises CheckpointError naming the file.

    With `mmap=True` (POSIX) CPU tensors are backed by a private map of the file
    (`torch.load(mmap=True)`): nothing is copied until written (`model.load_state_dict` copies;
    an optimizer keeps the mapped tensors and copies each page on its first update), so loading
    costs about what the verification costs. The file may be deleted or replaced afterwards, but
    while such tensors live its disk space is not freed: pass `mmap=False` to get plain memory.
    """
    path = Path(path)
    with _verified(path) as fd:
        try:
            state = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap and os.name == "posix")
        except Exception as err:
            raise CheckpointError(
                f"checkpoint {str(path)!r} passes its checksum but cannot be loaded safely: {_first_line(err)}"
            ) from None
        _check_same_file(path, fd)
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {str(path)!r} holds a {type(state).__name__}, not a state dict")
    return state


@contextlib.contextmanager
def _verified(path: Path) -> Iterator[int]:
    """Opens `path`, checks its trailer and checksum, and yields the open descriptor."""
    try:
        fd = os.open(path, os.O_RDONLY | _O_CLOEXEC | getattr(os, "O_NONBLOCK", 0))  # a FIFO must not hang us
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist") from None
    except OSError as err:
        raise CheckpointError(f"checkpoint {str(path)!r} cannot be opened: {err.strerror or err}") from None
    try:
        size = os.fstat(fd).st_size
        payload_size, chunk_size, digest = _read_trailer(fd, size, path)
        try:
            actual = _hash_file(fd, payload_size, chunk_size)
        except OSError as err:
            raise CheckpointError(f"checkpoint {str(path)!r} cannot be read: {err.strerror or err}") from None
        if actual != digest:
            raise CheckpointError(f"checkpoint {str(path)!r} fails its checksum: the file is corrupt")
        yield fd
    finally:
        os.close(fd)


def _read_trailer(fd: int, size: int, path: Path) -> tuple[int, int, bytes]:
    name = repr(str(path))
    if size == 0:
        raise CheckpointError(f"checkpoint {name} is empty (0 bytes): it was never written completely")
    if os.fstat(fd).st_mode & 0o170000 != 0o100000:
        raise CheckpointError(f"checkpoint {name} is not a regular file")
    head = os.pread(fd, 4, 0)
    if size < _TRAILER.size + _EOCD_SIZE or os.pread(fd, len(MAGIC), size - len(MAGIC)) != MAGIC:
        raise CheckpointError(f"{name} {_describe_foreign(fd, size, head)}")
    version, trailer_size, _ = _TAIL.unpack(os.pread(fd, _TAIL.size, size - _TAIL.size))
    if version != VERSION:
        newer = " (written by a newer gradloop?)" if version > VERSION else ""
        raise CheckpointError(f"checkpoint {name} has format version {version}{newer}; this gradloop reads version {VERSION}")
    payload_size, chunk_size, algorithm, digest, *_ = _TRAILER.unpack(os.pread(fd, _TRAILER.size, size - _TRAILER.size))
    if algorithm != CRC32_TREE:
        raise CheckpointError(f"checkpoint {name} uses checksum algorithm {algorithm}, which this gradloop does not know")
    if trailer_size != _TRAILER.size or chunk_size == 0 or payload_size + _TRAILER.size != size:
        raise CheckpointError(
            f"checkpoint {name} is truncated or corrupt: {size} bytes, but its trailer describes {payload_size + _TRAILER.size}"
        )
    eocd = os.pread(fd, _EOCD_SIZE, payload_size - _EOCD_SIZE)
    if head != b"PK\x03\x04" or not eocd.startswith(_EOCD) or eocd[-2:] != struct.pack("<H", _TRAILER.size):
        raise CheckpointError(f"checkpoint {name} is corrupt: its zip structure is damaged")
    return payload_size, chunk_size, digest


def _describe_foreign(fd: int, size: int, head: bytes) -> str:
    if not head.startswith(b"PK\x03\x04") and not (len(head) < 4 and b"PK\x03\x04".startswith(head)):
        return "is not a gradloop checkpoint (nor a torch.save file)"
    end = os.pread(fd, _EOCD_SIZE, max(0, size - _EOCD_SIZE))
    if end.startswith(_EOCD) and end[-2:] == b"\x00\x00":
        return ("is a plain torch.save file, not a gradloop checkpoint (it has no checksum): "
                "write checkpoints with Trainer.save_checkpoint, or read this one with torch.load")
    return "is truncated or corrupt: the end of the file, with its checksum, is missing"


def _hash_file(fd: int, payload_size: int, chunk_size: int) -> bytes:
    """The tree digest of the payload, with the zip comment length read as 0 (as it was hashed).

    Hashes a read-only map of the file: no copy, and the pages are the ones torch.load maps next.
    """
    with _mmap.mmap(fd, payload_size, access=_mmap.ACCESS_READ) as mapped:
        if hasattr(mapped, "madvise") and hasattr(_mmap, "MADV_WILLNEED"):
            mapped.madvise(_mmap.MADV_WILLNEED)  # a cold file: read ahead while the first chunks hash
        view = memoryview(mapped)
        try:
            starts = range(0, payload_size, chunk_size)
            groups = [starts[i:i + _CHUNKS_PER_TASK] for i in range(0, len(starts), _CHUNKS_PER_TASK)]
            job = lambda group: [_hash_chunk(view, s, min(s + chunk_size, payload_size)) for s in group]  # noqa: E731
            if len(groups) == 1:
                digests = job(groups[0])
            else:
                with ThreadPoolExecutor(_workers(), thread_name_prefix="gradloop-verify") as pool:
                    digests = [d for part in pool.map(job, groups) for d in part]
        finally:
            view.release()
    return _tree_root(payload_size, chunk_size, digests)


def _hash_chunk(view: memoryview, start: int, end: int) -> bytes:
    comment_length = len(view) - 2  # its 2 bytes were 0 when they were hashed
    chunk = _Crc32(view[start:min(end, comment_length)])
    if end > comment_length:
        chunk.update(bytes(end - max(start, comment_length)))
    return chunk.digest()


def _check_same_file(path: Path, fd: int) -> None:
    # torch.load opens the path again: make sure it read the file that was verified.
    try:
        same = os.path.samestat(os.stat(path), os.fstat(fd))
    except OSError:
        same = False
    if not same:
        raise CheckpointError(f"checkpoint {str(path)!r} was replaced while it was being loaded; load it again")


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__


# --------------------------------------------------------------------------------- finding
def candidates(directory: str | os.PathLike[str]) -> list[Path]:
    """Checkpoint files (`*.ckpt`) in `directory`, newest first; `last.ckpt` first among equals."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = []
    for path in directory.glob("*" + SUFFIX):
        try:
            found.append((path.stat().st_mtime_ns, path.name == "last" + SUFFIX, path.name, path))
        except OSError:
            continue
    return [entry[-1] for entry in sorted(found, reverse=True)]


def latest(directory: str | os.PathLike[str]) -> Path | None:
    """The newest checkpoint (by modification time) in `directory` that verifies; None when there is none.

    A broken newer file is skipped with a note on stderr; when every file fails verification,
    a CheckpointError names them all.
    """
    found = _first_usable(Path(directory), verify)
    return found[0] if found else None


def load_latest(directory: str | os.PathLike[str], map_location: Any = "cpu") -> tuple[Path, dict[str, Any]] | None:
    """Like `latest`, but loads the file too (verifying it once): `(path, state)`, or None."""
    return _first_usable(Path(directory), lambda path: load(path, map_location))


def _first_usable(directory: Path, use: Callable[[Path], Any]) -> tuple[Path, Any] | None:
    failures: list[str] = []
    for path in candidates(directory):
        try:
            result = use(path)
        except CheckpointError as err:
            failures.append(str(err))
            continue
        for failure in failures:
            print(f"gradloop: skipping a broken checkpoint: {failure}; using {str(path)!r}", file=sys.stderr)
        return path, result
    if failures:
        raise CheckpointError(f"no checkpoint in {str(directory)!r} can be used: " + "; ".join(failures))
    return None


# --------------------------------------------------------------------------------- restoring
def load_model_state(model: nn.Module, state: Mapping[str, Any], source: str | os.PathLike[str]) -> None:
    """`model.load_state_dict(state)`; a checkpoint of another model is one CheckpointError naming `source`."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    resized = [
        f"{k} {tuple(state[k].shape)} in the file, {tuple(v.shape)} in the model"
        for k, v in expected.items()
        if k in state and isinstance(state[k], torch.Tensor) and state[k].shape != v.shape
    ]
    problems = [f"{label}: {_some(names)}" for label, names in
                (("missing", missing), ("unexpected", unexpected), ("different shapes", resized)) if names]
    if problems:
        raise CheckpointError(f"{str(source)!r} holds weights of a different model ({'; '.join(problems)})")
    try:
        model.load_state_dict(state)
    except (RuntimeError, ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{str(source)!r} cannot be loaded into this model: {_first_line(err)}") from None


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: Mapping[str, Any], source: str | os.PathLike[str]) -> None:
    """`optimizer.load_state_dict(state)`; a mismatch is one CheckpointError naming `source`."""
    try:
        optimizer.load_state_dict(dict(state))
    except (RuntimeError, ValueError, KeyError, TypeError) as err:
        raise CheckpointError(
            f"{str(source)!r} holds optimizer state that does not fit this optimizer ({type(optimizer).__name__}): {_first_line(err)}"
        ) from None


def _some(names: list[str], limit: int = 3) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


# --------------------------------------------------------------------------------- weights
def export_weights(model: nn.Module, path: str | os.PathLike[str]) -> Path:
    """Writes the model's weights as safetensors (atomically)."""
    from safetensors.torch import save as to_bytes

    path = Path(path)
    tensors = {name: t.detach().contiguous().cpu() for name, t in model.state_dict().items()}
    data = to_bytes(_unshare(tensors), metadata={"format": "pt"})
    _atomic_write(path, lambda fd: _write_all(fd, memoryview(data)))
    return path


def load_weights(model: nn.Module, path: str | os.PathLike[str], strict: bool = True) -> nn.Module:
    """Loads weights written by `export_weights` (or any safetensors file) into `model`."""
    from safetensors.torch import load_file

    if not Path(path).is_file():
        raise CheckpointError(f"weights file {str(path)!r} does not exist")
    try:
        tensors = load_file(str(path), device="cpu")
    except Exception as err:
        raise CheckpointError(f"weights file {str(path)!r} is not a readable safetensors file: {_first_line(err)}") from None
    if strict:
        load_model_state(model, tensors, path)
        return model
    try:
        model.load_state_dict(tensors, strict=False)
    except RuntimeError as err:  # strict=False still refuses a shape mismatch
        raise CheckpointError(f"{str(path)!r} cannot be loaded into this model: {_first_line(err)}") from None
    return model


def _unshare(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses tensors that share memory (tied weights): give each its own copy.
    seen: set[int] = set()
    out = {}
    for name, tensor in tensors.items():
        key = tensor.untyped_storage().data_ptr() if tensor.numel() else id(tensor)
        out[name] = tensor.clone() if key in seen else tensor
        seen.add(key)
    return out
