"""Small utilities every part of gradloop shares: one of each, so that none is written twice.

atomic files, first line of an error, did-you-mean, RNG states and their preservation,
finiteness of weights, reading metrics.csv, whether a process is alive.
"""

from __future__ import annotations

import contextlib
import csv
import difflib
import errno
import os
import random
import re
import secrets
import socket
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

import numpy as np
import torch

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

TEMP_FILE = re.compile(r"^\..+\.[0-9a-f]{16}\.gradloop-tmp$")
_STALE_TEMP_AGE_S = 10.0  # a temp file this old and unlocked belongs to a writer that died
_COPY_BLOCK = 16 << 20
_NO_LINKS = {errno.EPERM, errno.EXDEV, errno.EMLINK, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP}
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)


# --------------------------------------------------------------------------------- atomic files
def atomic_write(path: str | os.PathLike[str], data: bytes | str | Callable[[int], None], *, durable: bool) -> Path:
    """Writes `data` (bytes, text, or a function that fills an open descriptor) to `path` atomically.

    An exclusively created temporary file in the target directory (no symlink is followed) is
    filled and renamed over `path`: a reader sees the old file or the new one, never half of one.
    `durable=True` also fsyncs the file before the rename and the directory after it, so the new
    file survives a power loss (checkpoints); `durable=False` skips both (logs and plots, which
    are rebuilt from the checkpoint). A temporary file left by a killed writer is never taken for
    the target and is removed by a later write. Raises OSError; the previous file stays intact.
    """
    path = Path(path)
    fill = data if callable(data) else _filler(data.encode() if isinstance(data, str) else data)
    with _directory(path) as dir_fd:
        _remove_stale_temps(dir_fd)
        temp = _temp_name(path.name)
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_NOFOLLOW | _O_CLOEXEC, 0o666, dir_fd=dir_fd)
        try:
            if fcntl is not None:  # marks the temp as in use, for _remove_stale_temps in other processes
                fcntl.flock(fd, fcntl.LOCK_EX)
            fill(fd)
            if durable:
                os.fsync(fd)
            os.replace(temp, path.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp, dir_fd=dir_fd)
            raise
        finally:
            os.close(fd)
        if durable:
            os.fsync(dir_fd)
    return path


def atomic_link(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> Path:
    """Gives the committed file `source` a second name `target` (a hard link), atomically and durably.

    Where hard links are not supported (some network and FAT file systems) `target` is an atomic copy.
    """
    source, target = Path(source), Path(target)
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
    except OSError as err:
        if err.errno not in _NO_LINKS:
            raise
    return atomic_write(target, lambda fd: _copy_into(source, fd), durable=True)


def write_all(fd: int, data: memoryview) -> None:
    while len(data):
        data = data[os.write(fd, data) :]


def _filler(data: bytes) -> Callable[[int], None]:
    return lambda fd: write_all(fd, memoryview(data))


def _copy_into(source: Path, fd: int) -> None:
    with open(source, "rb") as handle:
        while block := handle.read(_COPY_BLOCK):
            write_all(fd, memoryview(block))


@contextlib.contextmanager
def _directory(path: Path) -> Iterator[int]:
    """An open descriptor of `path`'s directory, created if missing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    dir_fd = os.open(path.parent, os.O_RDONLY | _O_DIRECTORY | _O_CLOEXEC)
    try:
        yield dir_fd
    finally:
        os.close(dir_fd)


def _temp_name(name: str) -> str:
    return f".{name}.{secrets.token_hex(8)}.gradloop-tmp"


def _remove_stale_temps(dir_fd: int) -> None:
    """Deletes temp files of writers that died (killed mid-write): unlocked and not brand new."""
    if fcntl is None:
        return
    for entry in os.scandir(dir_fd):
        if not TEMP_FILE.match(entry.name):
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


# --------------------------------------------------------------------------------- messages
def first_line(error: BaseException | str) -> str:
    """The first non-empty line of a message (library errors can span many), stripped.

    An exception without a message gives its type's name, so an error line is never empty.
    """
    fallback = type(error).__name__ if isinstance(error, BaseException) else ""
    return next((line.strip() for line in str(error).splitlines() if line.strip()), fallback)


def did_you_mean(name: str, choices: Iterable[str], prefix: str = "") -> str:
    """` (did you mean 'x'?)` for the closest choice (written as `prefix + choice`), or an empty string.

    >>> did_you_mean("adma", ["sgd", "adam", "adamw"])
    " (did you mean 'adam'?)"
    >>> did_you_mean("xyz", ["sgd", "adam"])
    ''
    """
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {prefix + close[0]!r}?)" if close else ""


def is_number(value: Any) -> bool:
    """An int or a float, and not a bool (which Python counts as an int)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_count(name: str, value: Any, minimum: int = 1, optional: bool = False) -> None:
    """The ValueError for an argument that must be an integer >= `minimum` (a bool is not one), or None when `optional`."""
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        expected = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(f"{name} must be {expected}{' or None' if optional else ''}; received: {name}={value!r}")


# --------------------------------------------------------------------------------- random numbers
def seed_everything(seed: int) -> None:
    """Seeds python's, numpy's and torch's global generators (all CUDA devices included).

    Call it before building a model to make its initial weights reproducible:

    >>> import torch
    >>> seed_everything(0)
    >>> first = torch.nn.Linear(3, 2).weight
    >>> seed_everything(0)
    >>> torch.equal(first, torch.nn.Linear(3, 2).weight)
    True
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """python's, numpy's and torch's global generator states (and every initialized CUDA device's),
    in types that `torch.load(weights_only=True)` reads back."""
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    assert isinstance(keys, np.ndarray)
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": (str(kind), torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextlib.contextmanager
def preserved_rng(seed: int | None = None) -> Iterator[None]:
    """Saves the global generators, seeds them with `seed` (None: leaves them as they are), and puts
    the saved states back on exit, whatever happened."""
    if seed is not None and torch.cuda.is_available():
        torch.cuda.init()  # torch.manual_seed reseeds every CUDA device: their states must be saved too
    saved = rng_state()
    try:
        if seed is not None:
            seed_everything(seed)
        yield
    finally:
        set_rng_state(saved)


# --------------------------------------------------------------------------------- tensors
def weights_are_finite(model: torch.nn.Module) -> bool:
    """No NaN or Inf in any floating-point parameter or buffer (one host sync; under FSDP a collective over the shards)."""
    tensors = [t for t in model.state_dict().values() if t.is_floating_point()]
    sharded = any(hasattr(t, "to_local") for t in tensors)  # FSDP's DTensors: every rank checks its shard
    tensors = [t.to_local() if hasattr(t, "to_local") else t for t in tensors]
    finite = torch.stack([torch.isfinite(t).all() for t in tensors]).all() if tensors else torch.tensor(True)
    if sharded:  # a collective: the same answer on every rank
        from .data import distributed

        return bool(distributed.all_reduce_sum((~finite).to(torch.int64).reshape(1)).item() == 0)
    return bool(finite)


# --------------------------------------------------------------------------------- sizes
def length_or_none(sized: Any) -> int | None:
    """`len(sized)`, or None for what has no length (an IterableDataset, a loader over one)."""
    try:
        return len(sized)
    except TypeError:
        return None


# --------------------------------------------------------------------------------- run records
def read_metrics_csv(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Rows of a metrics.csv as dicts of numbers (`epoch` an int, values floats), empty cells left out.

    Raises FileNotFoundError when there is no file and ValueError when it is not a readable CSV.
    """
    with open(path, newline="", encoding="utf-8") as handle:
        try:
            records = list(csv.DictReader(handle))
        except csv.Error as err:
            raise ValueError(f"{os.fspath(path)!r} is not a readable CSV file: {err}") from None
    return [{name: _cell_value(name, cell) for name, cell in record.items() if name is not None and cell} for record in records]


def _cell_value(name: str, cell: str) -> Any:
    try:
        value = float(cell)
    except ValueError:
        return cell
    return int(value) if name == "epoch" else value


# --------------------------------------------------------------------------------- processes
def host_name() -> str:
    """This machine's name, as recorded next to a process id (a pid means something only on its host)."""
    return socket.gethostname()


def pid_alive(pid: Any) -> bool:
    """Whether a process with this id exists on this machine (one of another user's counts)."""
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:  # os.kill(0 or -n, 0) asks about groups
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists, owned by another user
        return True
    return True


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{"train": {"lr": 0.1}}` -> `{"train.lr": 0.1}`; lists stay values."""
    flat: dict[str, Any] = {}
    for key, value in params.items():
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
