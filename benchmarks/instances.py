"""Benchmark instances: reading instance lists and unpacking ``.gz`` files into a cache.

Two folder layouts are understood:

* VNN-COMP 2021: ``<set>/<set>_instances.csv``, paths relative to ``<set>/``;
* VNN-COMP 2022 and later: ``benchmarks/<set>/instances.csv``, paths relative to
  ``<set>/``, the files themselves often shipped as ``.onnx.gz`` / ``.vnnlib.gz``.

Rows are ``onnx,vnnlib,timeout_s``.  A file named in a row that is missing but
has a ``.gz`` sibling (or that is named with ``.gz``) is unpacked on demand.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path


class InstanceError(ValueError):
    """An instance list or one of its files is missing or malformed."""


@dataclass(frozen=True)
class Instance:
    """One row of an instances CSV, with its files resolved against the CSV's folder."""

    benchmark: str
    onnx: str  # as written in the CSV
    vnnlib: str  # as written in the CSV
    timeout: float
    onnx_path: Path
    vnnlib_path: Path

    @property
    def key(self) -> tuple[str, str, str]:
        """What identifies the instance in a results CSV."""
        return (self.benchmark, self.onnx, self.vnnlib)


def benchmark_name(csv_path: Path) -> str:
    """``acasxu`` for ``acasxu/acasxu_instances.csv`` and for ``acasxu/instances.csv``."""
    name = csv_path.name
    for suffix in ("_instances.csv.gz", "_instances.csv"):
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return csv_path.resolve().parent.name


def find_instance_csvs(path: Path) -> list[Path]:
    """The instance CSVs named by ``path``: the file itself, a set folder, or a folder of sets."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise InstanceError(f"no such instances file or benchmark folder: {path}")
    own = _csvs_in(path)
    if own:
        return own
    nested = [c for sub in sorted(p for p in path.iterdir() if p.is_dir()) for c in _csvs_in(sub)]
    if not nested and (path / "benchmarks").is_dir():
        return find_instance_csvs(path / "benchmarks")
    if not nested:
        raise InstanceError(f"no instances.csv or *_instances.csv in {path} or its subfolders")
    return nested


def _csvs_in(folder: Path) -> list[Path]:
    exact = [folder / n for n in ("instances.csv", "instances.csv.gz") if (folder / n).is_file()]
    return exact[:1] or sorted(folder.glob("*_instances.csv"))


def read_instances(csv_path: Path, benchmark: str | None = None) -> list[Instance]:
    """The rows of one instances CSV, in order; paths are resolved, not checked."""
    base = csv_path.resolve().parent
    name = benchmark or benchmark_name(csv_path)
    opener = gzip.open if csv_path.suffix == ".gz" else open
    try:
        with opener(csv_path, "rt", newline="") as fh:
            rows = [r for r in csv.reader(fh) if r and not r[0].lstrip().startswith("#")]
    except (OSError, UnicodeDecodeError) as exc:
        raise InstanceError(f"cannot read {csv_path}: {exc}") from exc
    out = []
    for line, row in enumerate(rows, 1):
        if len(row) < 3:
            raise InstanceError(f"{csv_path}:{line}: expected 'onnx,vnnlib,timeout', got {','.join(row)!r}")
        onnx, vnnlib, timeout = (c.strip() for c in row[:3])
        try:
            seconds = float(timeout)
        except ValueError:
            raise InstanceError(f"{csv_path}:{line}: timeout {timeout!r} is not a number") from None
        if not seconds > 0:
            raise InstanceError(f"{csv_path}:{line}: timeout must be positive, got {timeout}")
        out.append(Instance(name, onnx, vnnlib, seconds, base / onnx, base / vnnlib))
    return out


def load_instances(paths: list[Path], benchmark: str | None = None) -> list[Instance]:
    """All instances named by ``paths`` (files, set folders or folders of sets), in order."""
    return [i for p in paths for c in find_instance_csvs(Path(p)) for i in read_instances(c, benchmark)]


def materialize(path: Path, cache_dir: Path) -> tuple[Path, float]:
    """A plain (unpacked) file for ``path`` and the seconds spent unpacking it (0 when cached)."""
    if path.suffix != ".gz" and path.is_file():
        return path, 0.0
    packed = path if path.suffix == ".gz" else path.with_name(path.name + ".gz")
    if not packed.is_file():
        raise InstanceError(f"instance file not found: {path}")
    digest = hashlib.sha1(str(packed.resolve()).encode()).hexdigest()[:12]
    target = cache_dir / digest / packed.name[: -len(".gz")]
    stat = packed.stat()
    if target.is_file() and target.stat().st_mtime_ns == stat.st_mtime_ns:
        return target, 0.0
    start = time.perf_counter()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        with gzip.open(packed, "rb") as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        os.utime(tmp, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        os.replace(tmp, target)  # atomic: concurrent runners never see half a file
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        tmp.unlink(missing_ok=True)
        raise InstanceError(f"cannot unpack {packed}: {exc}") from exc
    return target, time.perf_counter() - start


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/verify-bench`` (``~/.cache/verify-bench``)."""
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "verify-bench"
