"""Writes that matter go to a unique temporary name, are fsynced, and are renamed into place.

A killed process therefore never leaves a file that looks complete but is not. Run directories, IG
map stores, study and search results, reports, exports, bench files and locks all write through
here, inside :func:`guarded_write`: a write that fails (no space, quota, permission, read-only file
system) removes its temporary file and becomes one :class:`~igkd.errors.WriteError` line naming the
file, the cause and how to continue.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import CorruptFileError, WriteError

# Why a write failed, in words, and what frees the way; any other OSError keeps its own message.
_FULL = "free some space (or choose a folder on another file system)"
_DENIED = "make the folder writable (or choose another one)"
_WRITE_ERRORS = {
    errno.ENOSPC: ("no space left on the device", _FULL),
    errno.EDQUOT: ("disk quota exceeded", "free some of your quota (or choose a folder on another file system)"),
    errno.EFBIG: ("file too large (a file-size limit)", "raise the limit (ulimit -f) or choose another folder"),
    errno.EACCES: ("permission denied", _DENIED),
    errno.EPERM: ("operation not permitted", _DENIED),
    errno.EROFS: ("read-only file system", "choose a folder on a writable file system"),
}


def write_error(path: str | Path, e: OSError) -> WriteError:
    """The :class:`WriteError` of ``e``, raised while writing ``path``."""
    reason, fix = _WRITE_ERRORS.get(e.errno, (e.strerror or type(e).__name__, "fix the cause"))
    code = errno.errorcode.get(e.errno) if e.errno is not None else None
    return WriteError(path, f"{reason}{f' ({code})' if code else ''}", fix)


@contextmanager
def guarded_write(path: str | Path) -> Iterator[None]:
    """Turn an ``OSError`` raised while writing ``path`` into one :class:`WriteError` line."""
    try:
        yield
    except OSError as e:
        raise write_error(path, e) from None


def ensure_dir(path: str | Path) -> Path:
    """``path`` as a folder (with its parents), created if needed, inside :func:`guarded_write`."""
    path = Path(path)
    with guarded_write(path):
        path.mkdir(parents=True, exist_ok=True)
    return path


def fsync_dir(path: str | Path) -> None:
    """Make a rename in ``path`` durable (best effort: not every file system allows it)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """``data`` at ``path`` in full, or (the write failed: :class:`WriteError`) ``path`` as it was."""
    path = Path(path)
    ensure_dir(path.parent)
    with guarded_write(path):
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    fsync_dir(path.parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def write_json(path: str | Path, obj: Any, indent: int = 2, sort_keys: bool = False) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=sort_keys) + "\n")


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


# --------------------------------------------------------------------------------------------------
# Checksums: every checkpoint and result file carries one, checked whenever it is read.


def content_hash(obj: Any) -> str:
    """sha256 over a nest of dicts, lists, tensors and plain values: names, types, shapes and bytes.

    Independent of the file format, so a checkpoint can carry the hash of what it holds.
    """
    h = hashlib.sha256()
    _feed(h, obj)
    return h.hexdigest()


def tensor_bytes(t) -> bytes:
    """The raw bytes of a tensor's values, row-major, whatever its device, strides or dtype."""
    import torch

    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def _feed(h, obj: Any) -> None:
    import torch

    if isinstance(obj, torch.Tensor):
        h.update(f"T{obj.dtype}{tuple(obj.shape)}".encode())
        h.update(tensor_bytes(obj))
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)}".encode())
        for k in sorted(obj, key=repr):
            h.update(repr(k).encode())
            _feed(h, obj[k])
    elif isinstance(obj, (list, tuple)):
        h.update(f"L{len(obj)}".encode())
        for v in obj:
            _feed(h, v)
    else:
        h.update(f"V{type(obj).__name__}:{obj!r};".encode())


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _json_digest(body: dict) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def write_checked_json(path: str | Path, obj: dict, indent: int = 2) -> None:
    """``obj`` as JSON with a ``sha256`` entry over the rest, checked by :func:`read_checked_json`."""
    body = {k: v for k, v in obj.items() if k != "sha256"}
    write_json(path, {**body, "sha256": _json_digest(body)}, indent=indent)


def read_checked_json(path: str | Path, fix: str) -> dict:
    """A JSON object written by :func:`write_checked_json`; a file that fails its checksum is an error."""
    path = Path(path)
    try:
        obj = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CorruptFileError(f"{path} is unreadable ({type(e).__name__}); {fix}") from None
    if not isinstance(obj, dict) or "sha256" not in obj:
        raise CorruptFileError(f"{path} carries no checksum; {fix}")
    body = {k: v for k, v in obj.items() if k != "sha256"}
    if _json_digest(body) != obj["sha256"]:
        raise CorruptFileError(f"{path} does not match its checksum (truncated or altered); {fix}")
    return body


def write_with_sidecar(path: str | Path, data: bytes) -> None:
    """``data`` at ``path`` and its sha256 at ``path.sha256`` (for files whose format has no room for it)."""
    path = Path(path)
    sidecar = path.with_name(path.name + ".sha256")
    atomic_write_bytes(path, data)
    atomic_write_text(sidecar, f"{hashlib.sha256(data).hexdigest()}  {path.name}\n")


def read_with_sidecar(path: str | Path, fix: str) -> bytes:
    """The bytes of a file written by :func:`write_with_sidecar`, checked against its sha256."""
    path = Path(path)
    sidecar = path.with_name(path.name + ".sha256")
    try:
        data = path.read_bytes()
        expected = sidecar.read_text().split()[0] if sidecar.is_file() else None
    except (OSError, IndexError) as e:
        raise CorruptFileError(f"{path} is unreadable ({type(e).__name__}); {fix}") from None
    if expected is None:
        raise CorruptFileError(f"{path} has no checksum file {sidecar.name}; {fix}")
    if hashlib.sha256(data).hexdigest() != expected:
        raise CorruptFileError(f"{path} does not match its checksum in {sidecar.name} (truncated or altered); {fix}")
    return data


# --------------------------------------------------------------------------------------------------
# A finished run directory's result files (read without torch: the report uses these)


def read_run_summary(run_dir: str | Path) -> dict:
    """``summary.json`` of a finished run, checked, with the run's files checked against its manifest."""
    run_dir = Path(run_dir)
    fix = f"delete {run_dir} and run it again"
    summary = read_checked_json(run_dir / "summary.json", fix)
    for name, digest in summary.get("files", {}).items():
        if not (run_dir / name).is_file() or file_sha256(run_dir / name) != digest:
            raise CorruptFileError(f"{run_dir / name} is missing or does not match the checksum in "
                                   f"{run_dir / 'summary.json'}; {fix}")
    return summary


def read_run_metrics(run_dir: str | Path) -> list[dict]:
    """The per-epoch records of ``metrics.jsonl``; checked against the summary once the run is complete."""
    run_dir = Path(run_dir)
    if (run_dir / "summary.json").is_file():
        read_run_summary(run_dir)
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CorruptFileError(f"{path} is unreadable; resuming the run rewrites it") from None


# --------------------------------------------------------------------------------------------------
# Rows of a .npy file read by position: the data path of a dataset larger than memory.


class NpyRows:
    """An (N, ...) array in a ``.npy`` file, read a batch of rows at a time, as a tensor.

    Reads are ``preadv`` into a fresh buffer (one call per row, one per run of consecutive rows), not a
    memory map: a mapped page stays in the process's resident memory once touched, and the kernel maps
    a whole large folio of the page cache (up to 2 MB) for a touched row, so a batch of 512 rows of a
    memory-mapped file puts up to 1 GB into the process. A read leaves the bytes in the page cache only
    (shared, reclaimable), so resident memory stays flat however large the file. Indexing (an int, a
    slice, positions) gives a ``torch.Tensor``, so code written for an in-memory tensor (``x[pos]``,
    ``x[a:b]``, ``x.shape``) reads from disk unchanged. ``rows`` maps positions to rows of the file (a
    subset). Pickles without its file handle, so DataLoader workers open the file again.
    """

    def __init__(self, path: str | Path, rows: Any = None):
        import numpy as np

        self.path = Path(path)
        try:  # the header only: the map is dropped before a page of it is touched
            mapped = np.load(self.path, mmap_mode="r")
        except (OSError, ValueError, EOFError) as e:
            raise CorruptFileError(f"{self.path} is not a readable .npy file ({type(e).__name__}); rebuild it") from None
        if not mapped.flags.c_contiguous:
            raise CorruptFileError(f"{self.path} holds a Fortran-ordered array; rewrite it in C order")
        self.file_shape, self.np_dtype, self.offset = tuple(mapped.shape), mapped.dtype, int(mapped.offset)
        del mapped
        self.row_bytes = self.np_dtype.itemsize * int(np.prod(self.file_shape[1:], dtype=np.int64))
        self.rows = None if rows is None else np.asarray(rows, dtype=np.int64)
        self._fd: int | None = None

    @property
    def shape(self):
        import torch

        return torch.Size((len(self), *self.file_shape[1:]))

    @property
    def dtype(self):
        import numpy as np
        import torch

        return torch.from_numpy(np.empty(0, self.np_dtype)).dtype

    def dim(self) -> int:
        return len(self.file_shape)

    def __len__(self) -> int:
        return self.file_shape[0] if self.rows is None else len(self.rows)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_fd": None}

    def __del__(self) -> None:
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)

    def subset(self, positions: Any) -> NpyRows:
        """The rows at ``positions`` (of this view), as a view of the same file."""
        import numpy as np

        out = type(self).__new__(type(self))
        out.__dict__.update(self.__getstate__())
        out.rows = self._file_rows(np.asarray(positions, dtype=np.int64).reshape(-1))
        return out

    def _file_rows(self, positions):
        import numpy as np

        n = len(self)
        if positions.size and (positions.min() < -n or positions.max() >= n):
            raise IndexError(f"positions must be in [0, {n}), got min {positions.min()} max {positions.max()}")
        positions = np.where(positions < 0, positions + n, positions)
        return positions if self.rows is None else self.rows[positions]

    def __getitem__(self, key: Any):
        import numpy as np
        import torch

        if isinstance(key, (int, np.integer)):
            return self.read(np.array([int(key)]))[0]
        if isinstance(key, slice):
            return self.read(np.arange(len(self))[key])
        if isinstance(key, torch.Tensor):
            key = key.detach().cpu().numpy()
        key = np.asarray(key)
        if key.dtype == bool:
            key = np.flatnonzero(key)
        return self.read(key.astype(np.int64).reshape(-1))

    def read(self, positions: Any):
        """The rows at ``positions`` as a tensor."""
        import numpy as np
        import torch

        rows = self._file_rows(np.asarray(positions, dtype=np.int64).reshape(-1))
        out = np.empty((len(rows), *self.file_shape[1:]), self.np_dtype)
        if not len(rows):
            return torch.from_numpy(out)
        flat = out.reshape(len(rows), -1).view(np.uint8)
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        if len(rows) > 1 and rows[-1] - rows[0] == len(rows) - 1 and bool((np.diff(rows) == 1).all()):
            self._read_into(memoryview(flat.reshape(-1)), int(rows[0]))  # one run (a slice): one read
        else:
            for i, r in enumerate(rows.tolist()):  # the hot loop: a system call per row, nothing else
                if os.preadv(self._fd, [flat[i]], self.offset + r * self.row_bytes) != self.row_bytes:
                    self._read_into(memoryview(flat[i]), r)  # short read (rare): finish it, or say why not
        return torch.from_numpy(out)

    def _read_into(self, view: memoryview, row: int) -> None:
        offset = self.offset + row * self.row_bytes
        while len(view):
            got = os.preadv(self._fd, [view], offset)
            if got <= 0:
                raise CorruptFileError(f"{self.path} ends before row {row}: truncated; rebuild it")
            view, offset = view[got:], offset + got

    def to(self, device: Any):
        """All rows in memory (on ``device``): what code that needs the whole array gets."""
        return self[:].to(device)
