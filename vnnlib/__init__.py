"""VNN-LIB 1.0 and 2.0 reader and writer (numpy only)."""

from vnnlib.spec import Case, Polytope, Spec, SpecError, TensorDecl

__all__ = ["Case", "Polytope", "Spec", "SpecError", "TensorDecl", "read_spec", "parse_spec", "write_spec"]


def __getattr__(name: str):  # lazy: the reader/writer modules import on first use
    if name in ("read_spec", "parse_spec"):
        from vnnlib import reader

        return getattr(reader, name)
    if name == "write_spec":
        from vnnlib.writer import write_spec

        return write_spec
    raise AttributeError(name)
