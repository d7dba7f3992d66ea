"""Reading model files, plain or gzipped (VNN-COMP distributes ``.onnx.gz``)."""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

from verifier.errors import InputFileError


def read_model_bytes(path: str | os.PathLike) -> bytes:
    """The bytes of an ONNX file, unpacked when it is gzipped (by its magic number, whatever its name)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InputFileError(f"model file not found: {path}") from None
    except OSError as e:
        raise InputFileError(f"cannot read model file {path}: {e.strerror or e}") from None
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as e:
            raise InputFileError(f"cannot unpack {path}: {e}") from None
    return data


def is_gzipped(path: str | os.PathLike) -> bool:
    """Whether the file starts with gzip's magic number (False if it cannot be read)."""
    try:
        with open(path, "rb") as f:
            return f.read(2) == b"\x1f\x8b"
    except OSError:
        return False
