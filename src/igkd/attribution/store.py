"""The IG map store: one memory-mapped (N, H, W) array, index-aligned with its dataset.

A store is a directory::

    maps.npy        (N, H, W) float16 or float32; maps[i] is the map of dataset position i
    meta.json       what made it (dataset fingerprint, teacher hash, IG settings, input convention),
                    the chunk layout, and, once finalised, ``complete: true`` and the delta summary
    done/           one small JSON completion record per finished chunk (written after its maps
                    are on disk), named ``<chunk>-<token>.json``

Every write that matters goes to a temporary name first and is renamed (or hard-linked) into place,
so a killed process never leaves a file that looks complete but is not. A store is usable only when
``meta.json`` says ``complete``; :meth:`MapStore.open` refuses anything else.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import StaleStoreError
from ..fileio import fsync_dir, write_json

FORMAT = "igkd-map-store"
VERSION = 1
FIX = "rerun `igkd precompute-ig` with the same config"

# The keys a caller may expect; ``MapStore.open`` compares them with the store's metadata.
IDENTITY_KEYS = ("dataset", "fingerprint", "teacher_hash", "n_steps", "method", "baseline", "convention")
_ALIASES = {"dataset_fingerprint": "fingerprint"}

BASELINES: dict[str, dict[str, str]] = {
    "zeros-normalized": {
        "name": "zeros-normalized", "kind": "zeros", "space": "normalized",
        "description": "zero in network-input space, i.e. the mean-colour image (the paper's choice)",
    },
    "black": {
        "name": "black", "kind": "zeros", "space": "pixel",
        "description": "pixel value 0 (black), i.e. -mean/std in network-input space",
    },
}


def baseline_spec(baseline: str | Mapping[str, Any]) -> dict[str, str]:
    """The recorded description of a baseline given by name (or already as a description)."""
    if isinstance(baseline, Mapping):
        name = baseline.get("name")
        if name not in BASELINES:
            kind_space = (baseline.get("kind"), baseline.get("space"))
            matches = [v for v in BASELINES.values() if (v["kind"], v["space"]) == kind_space]
            if not matches:
                raise ValueError(f"unknown baseline {dict(baseline)!r}")
            return dict(matches[0])
        return dict(BASELINES[name])
    if baseline not in BASELINES:
        raise ValueError(f"unknown baseline {baseline!r}; choose one of {', '.join(BASELINES)}")
    return dict(BASELINES[baseline])


def _canonical(value: Any) -> Any:
    """JSON round trip, so tuples and lists (and int/float spellings) compare as stored."""
    return json.loads(json.dumps(value))


def _same(key: str, stored: Any, expected: Any) -> bool:
    if key == "baseline":
        try:
            return baseline_spec(stored)["name"] == baseline_spec(expected)["name"]
        except ValueError:
            return False
    return _canonical(stored) == _canonical(expected)


def _short(value: Any) -> str:
    if isinstance(value, Mapping) and "name" in value:
        return str(value["name"])
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return text if len(text) <= 40 else text[:16] + "..." + text[-8:]


def mismatches(meta: Mapping[str, Any], expect: Mapping[str, Any]) -> list[str]:
    """Human-readable differences between a store's metadata and what the caller expects."""
    out = []
    for key, want in expect.items():
        key = _ALIASES.get(key, key)
        if key not in IDENTITY_KEYS:
            raise ValueError(f"unknown store key {key!r}; known: {', '.join(IDENTITY_KEYS)}")
        have = meta.get(key)
        if _same(key, have, want):
            continue
        if key != "baseline" and isinstance(have, Mapping) and isinstance(want, Mapping):
            have, want = _canonical(have), _canonical(want)
            for sub in sorted(set(have) | set(want)):
                if have.get(sub) != want.get(sub):
                    out.append(f"{key}.{sub} {_short(have.get(sub))} != expected {_short(want.get(sub))}")
        else:
            out.append(f"{key} {_short(have)} != expected {_short(want)}")
    return out


# --------------------------------------------------------------------------------------------------
# Small file helpers


def write_json_atomic(path: Path, data: Mapping[str, Any]) -> None:
    """The store's JSON layout (sorted keys), written atomically."""
    write_json(path, data, indent=1, sort_keys=True)


def publish_exclusive(tmp: Path, final: Path) -> bool:
    """Move ``tmp`` to ``final`` unless ``final`` exists; True if this call put it there.

    A hard link fails atomically when the name exists, so two processes creating the same store at
    once cannot overwrite each other's file. File systems without hard links fall back to a check
    followed by a rename (not atomic: start one rank first there).
    """
    try:
        os.link(tmp, final)
        won = True
    except FileExistsError:
        won = False
    except OSError:
        won = not final.exists()
        if won:
            os.replace(tmp, final)
            return True
    tmp.unlink(missing_ok=True)
    if won:
        fsync_dir(final.parent)
    return won


def read_meta(path: Path) -> dict[str, Any]:
    meta_path = Path(path) / "meta.json"
    if not meta_path.exists():
        raise StaleStoreError(f"no IG map store at {path} (no meta.json): {FIX}")
    try:
        with open(meta_path) as f:
            meta = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise StaleStoreError(f"unreadable meta.json in {path} ({e}): delete the folder and {FIX}") from None
    if meta.get("format") != FORMAT:
        raise StaleStoreError(f"{path} is not an igkd map store: choose another folder or delete it")
    return meta


def data_offset(maps_path: Path) -> int:
    """Byte offset of the array data in an .npy file."""
    return int(np.load(maps_path, mmap_mode="r").offset)


# --------------------------------------------------------------------------------------------------
# Reading


class MapStore:
    """A complete, verified map store, read through a read-only memory map.

    ``get(positions)`` returns the maps of those dataset positions; position ``i`` is always the
    image at position ``i`` of the dataset whose fingerprint the store records.
    """

    def __init__(self, path: Path, meta: dict[str, Any]):
        self.path = Path(path)
        self.meta = meta
        self._maps: np.memmap | None = None

    @classmethod
    def open(cls, path: str | os.PathLike, expect: Mapping[str, Any] | None = None) -> MapStore:
        """Open a finished store; raise :class:`StaleStoreError` if it is unfinished or stale.

        ``expect`` holds any of :data:`IDENTITY_KEYS` (``dataset_fingerprint`` is accepted for
        ``fingerprint``); each must equal the store's value. The error names what differs.
        """
        path = Path(path)
        meta = read_meta(path)
        if not meta.get("complete"):
            done = len(list((path / "done").glob("*.json"))) if (path / "done").is_dir() else 0
            raise StaleStoreError(
                f"IG map store {path} is incomplete ({done} of {meta.get('num_chunks', '?')} chunks "
                f"recorded, not finalised): {FIX} to finish it")
        if expect:
            diff = mismatches(meta, expect)
            if diff:
                raise StaleStoreError(f"IG map store {path} is stale ({'; '.join(diff)}): {FIX}")
        store = cls(path, meta)
        maps = store.maps
        if list(maps.shape) != list(meta["shape"]) or str(maps.dtype) != meta["dtype"]:
            raise StaleStoreError(f"IG map store {path}: maps.npy is {maps.dtype} {list(maps.shape)}, "
                                  f"meta.json says {meta['dtype']} {meta['shape']}: {FIX}")
        return store

    @property
    def maps(self) -> np.memmap:
        if self._maps is None:  # opened lazily, so a pickled store (DataLoader worker) reopens it
            self._maps = np.load(self.path / "maps.npy", mmap_mode="r")
        return self._maps

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "meta": self.meta, "_maps": None}

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.meta["shape"])

    def __len__(self) -> int:
        return int(self.meta["shape"][0])

    def get(self, positions: torch.Tensor | np.ndarray | list[int],
            device: torch.device | str | None = None) -> torch.Tensor:
        """Maps of the given dataset positions as float32, shape (B, H, W), in the order given."""
        idx = torch.as_tensor(positions).detach().to("cpu", torch.int64).numpy().reshape(-1)
        n = len(self)
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise IndexError(f"positions must be in [0, {n}), got min {idx.min()} max {idx.max()}")
        out = torch.from_numpy(np.asarray(self.maps[idx], dtype=np.float32))
        return out if device is None else out.to(device)

    def load_all(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """All maps in memory, (N, H, W)."""
        return torch.from_numpy(np.array(self.maps)).to(dtype)

    def __repr__(self) -> str:
        return f"MapStore({str(self.path)!r}, shape={self.shape}, dtype={self.meta['dtype']})"
