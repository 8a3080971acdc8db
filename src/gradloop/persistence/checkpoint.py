"""The checkpoint file: its format and checksum, saving it atomically, verifying and loading it safely.

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
import hashlib
import io
import mmap as _mmap
import os
import struct
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import torch

from ..util import TEMP_FILE, atomic_link, atomic_write, first_line, write_all

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
_CHUNKS_PER_TASK = 16  # verification hands out this many chunks at a time to each thread
_WRITEBACK_EVERY = 128 << 20
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing, truncated, corrupt, foreign or incompatible."""


class CheckpointWriteError(CheckpointError, OSError):
    """A checkpoint that could not be written (unwritable directory, disk full, ...)."""

    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno


# --------------------------------------------------------------------------------- names
def path_in(directory: str | os.PathLike[str], name: str) -> Path:
    """`directory / name` for a file name made by gradloop; refuses anything that could leave `directory`."""
    if not name or name.startswith(".") or "\x00" in name or os.sep in name or (os.altsep is not None and os.altsep in name):
        raise ValueError(f"checkpoint name {name!r} must be a plain file name (no path separators, not hidden)")
    return Path(directory) / name


# --------------------------------------------------------------------------------- saving
def save(state: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Writes `state` (anything `torch.load(weights_only=True)` can read back) to `path`, atomically."""
    path = Path(path)
    if not path.name or TEMP_FILE.match(path.name):
        raise ValueError(f"{str(path)!r} is not a usable checkpoint file name")

    def fill(fd: int) -> None:
        # the pool starts its threads at the first submit: a small state is hashed on this thread
        with ThreadPoolExecutor(_workers(), thread_name_prefix="gradloop-hash") as hasher, _Writeback(fd) as writeback:
            writer = _HashingWriter(fd, hasher, writeback)
            try:
                with _zip_crc32_off():
                    torch.save(dict(state), writer)  # type: ignore[arg-type]  # a write-only file object
            except Exception:
                if writer.error is not None:  # torch reports a failed write as its own RuntimeError
                    raise writer.error from None
                raise
            writer.finish()

    write(path, fill)
    return path


class _TreeHash:
    """The tree digest, fed in order; `split` cuts incoming bytes at chunk boundaries."""

    def __init__(self) -> None:
        self.chunk_size = CHUNK_SIZE
        self.size = 0
        self._chunks: list[Any] = [_Crc32()]
        self._filled = 0

    def split(self, data: memoryview) -> list[tuple[Any, memoryview]]:
        """(hasher, piece) pairs covering `data`; each hasher must get its piece before the next `split`."""
        pieces, offset = [], 0
        while offset < len(data):
            take = min(self.chunk_size - self._filled, len(data) - offset)
            pieces.append((self._chunks[-1], data[offset : offset + take]))
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


def _workers() -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cores, 8))


class _HashingWriter:
    """The file object torch.save writes into: bytes go to disk while worker threads hash them.

    torch hands `write` a view of the tensor's own memory, valid only during the call, so each
    call waits for its hashes; for a large tensor the write and the hashing overlap.
    """

    def __init__(self, fd: int, hasher: ThreadPoolExecutor, writeback: "_Writeback") -> None:
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
            write_all(self.fd, view)
        else:
            futures = [self.hasher.submit(chunk.update, piece) for chunk, piece in pieces]
            try:
                write_all(self.fd, view)
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
        write_all(self.fd, memoryview(trailer))


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


def _write_error(path: Path, err: OSError) -> CheckpointWriteError:
    if isinstance(err, CheckpointWriteError):
        return err
    reason = err.strerror or str(err)
    return CheckpointWriteError(f"cannot write {str(path)!r}: {reason}; the previous file (if any) is intact", err.errno)


def write(path: Path, data: bytes | Callable[[int], None]) -> Path:
    """`util.atomic_write(..., durable=True)`, its OSError as a CheckpointWriteError naming `path`."""
    try:
        return atomic_write(path, data, durable=True)
    except OSError as err:
        raise _write_error(path, err) from err


def link(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> Path:
    """Gives the committed checkpoint `source` a second name `target` (`util.atomic_link`)."""
    target = Path(target)
    path_in(target.parent, target.name)
    try:
        return atomic_link(source, target)
    except OSError as err:
        raise _write_error(target, err) from err


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
                f"checkpoint {str(path)!r} passes its checksum but cannot be loaded safely: {type(err).__name__}: {first_line(err)}"
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
        return (
            "is a plain torch.save file, not a gradloop checkpoint (it has no checksum): "
            "write checkpoints with Trainer.save_checkpoint, or read this one with torch.load"
        )
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
            groups = [starts[i : i + _CHUNKS_PER_TASK] for i in range(0, len(starts), _CHUNKS_PER_TASK)]
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
    chunk = _Crc32(view[start : min(end, comment_length)])
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
