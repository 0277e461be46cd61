#!/usr/bin/env python3
"""How long an image folder's listing and cache key take at each start of a streamed run (before its first batch).

Builds a folder of empty ``.png`` files (their content is never read here: the listing finds the files, the
key is each file's resolved path, modification time and size), then times igkd's listing and key, and the
same done the straightforward way (igkd's until 8530eec): ``Path.iterdir`` and ``Path.is_file``, sorted
``Path`` objects, then ``Path.stat`` and ``Path.resolve`` a file; and checks that both give the same files
and key. Prints a table.

    .venv/bin/python benchmarks/folder_listing.py --files 200000
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
import time
from pathlib import Path


def per_file_listing(split: Path) -> list[Path]:
    files = []
    for cls in sorted(d.name for d in split.iterdir() if d.is_dir()):
        files += sorted(p for p in (split / cls).iterdir() if p.is_file() and p.suffix.lower() == ".png")
    return files


def per_file_key(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        st = p.stat()
        h.update(f"{p.resolve()}\0{st.st_mtime_ns}\0{st.st_size}\n".encode())
    return h.hexdigest()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=200000)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args(argv)
    from igkd.data import loaders

    with tempfile.TemporaryDirectory(prefix="igkd-listing-") as tmp:
        root = Path(tmp)
        for i in range(args.files):
            folder = root / "train" / f"class{i % args.classes}"
            if i < args.classes:
                folder.mkdir(parents=True)
            (folder / f"{i:07d}.png").touch()
        print(f"{args.files:,} files in {args.classes} class folders\n")
        print("| repeat | igkd listing + key (s) | straightforward listing + key (s) | same files and key |")
        print("|---:|---:|---:|---|")
        for r in range(args.repeats):
            t0 = time.perf_counter()
            files, _labels, _classes = loaders._folder_listing("train", root)
            key = loaders._stat_digest(files)
            t_igkd = time.perf_counter() - t0
            t0 = time.perf_counter()
            plain_files = per_file_listing(root / "train")
            plain = per_file_key(plain_files)
            t_plain = time.perf_counter() - t0
            print(f"| {r + 1} | {t_igkd:.2f} | {t_plain:.2f} | {plain_files == files and key == plain} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
