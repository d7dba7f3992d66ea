"""Configuration: a tree of frozen dataclasses built from defaults, a YAML file, then overrides.

Each engine defines its own options dataclass next to its code; ``Config``
only composes them, and each function receives only its own part.  Unknown
keys are rejected with a ``ConfigError`` that names them.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from verifier.bab.options import BabOptions
from verifier.errors import ConfigError
from verifier.exact.options import MilpOptions, SmtOptions
from verifier.options import AlphaOptions, AttackOptions

ENGINES = ("auto", "bab", "milp", "smt")
STAGES = ("attack", "ibp", "crown", "alpha", "complete")


@dataclass(frozen=True)
class Config:
    """Everything one verification may be told; see README.md for each key."""

    device: str = "cpu"
    # the bounds' arithmetic; both are rigorous (README "Soundness"), but float32's rounding allowance is
    # about 1e-2 on an mnistfc margin, which keeps close subdomains from being proven
    dtype: Literal["float32", "float64"] = "float64"
    seed: int = 0
    threads: int = 0  # torch CPU threads; 0 = automatic (1 for small networks, where more only add overhead)
    engine: Literal["auto", "bab", "milp", "smt"] = "auto"
    row_combinations: int = 9  # convex combinations per pair of rows of a polytope (0: none); see objective.py
    stop_after: Literal["attack", "ibp", "crown", "alpha", "complete"] = "complete"  # else: unknown after it
    proof: bool = False  # record a proof certificate of an unsat answer (``Result.proof``, ``--proof FILE``)
    certify: bool = False  # answer unsat only when the independent checker accepts the certificate
    attack: AttackOptions = field(default_factory=AttackOptions)
    alpha: AlphaOptions = field(default_factory=AlphaOptions)
    bab: BabOptions = field(default_factory=BabOptions)
    milp: MilpOptions = field(default_factory=MilpOptions)
    smt: SmtOptions = field(default_factory=SmtOptions)

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise ConfigError(f"engine must be one of {', '.join(ENGINES)}, not {self.engine!r}")
        if self.stop_after not in STAGES:
            raise ConfigError(f"stop_after must be one of {', '.join(STAGES)}, not {self.stop_after!r}")
        if self.dtype not in ("float32", "float64"):
            raise ConfigError(f"dtype must be float32 or float64, not {self.dtype!r}")
        if not (self.device == "cpu" or self.device.startswith("cuda")):
            raise ConfigError(f"device must be cpu or cuda[:N], not {self.device!r}")


def merge(obj: Any, updates: dict[str, Any], where: str = "config") -> Any:
    """A copy of dataclass ``obj`` with nested ``updates`` applied; unknown keys are errors."""
    if not isinstance(updates, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(updates).__name__}")
    known = {f.name: f for f in dataclasses.fields(obj)}
    unknown = sorted(set(updates) - set(known))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    hints = typing.get_type_hints(type(obj))
    changes = {}
    for key, value in updates.items():
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            changes[key] = merge(current, value, f"{where}.{key}")
        else:
            changes[key] = _coerce(value, hints[key], f"{where}.{key}")
    try:
        return dataclasses.replace(obj, **changes)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"{where}: {exc}") from None


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """``value`` converted to the field type ``hint`` (bool, int, float, str, optional of these)."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) is typing.Literal:
        if isinstance(value, bool) and {"on", "off"} <= set(args):
            value = "on" if value else "off"  # YAML 1.1 reads an unquoted on/off as a boolean
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        hint = next(a for a in args if a is not type(None))
    try:
        if hint is bool:
            if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
                return value.lower() in ("true", "yes", "1")
            if isinstance(value, bool):
                return value
            raise ValueError("expected true or false")
        if hint is int and not isinstance(value, bool):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError("expected an integer")
            return int(value)
        if hint is float and not isinstance(value, bool):
            return float(value)
        if hint is str:
            return str(value)
        if typing.get_origin(hint) is tuple:
            return tuple(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {value!r} is not valid ({exc})") from None
    raise ConfigError(f"{where}: {value!r} is not valid for {hint}")


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Defaults, then the YAML file at ``path``, then ``overrides`` (nested dicts)."""
    config = Config()
    if path is not None:
        import yaml

        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
        config = merge(config, data, str(path))
    if overrides:
        config = merge(config, overrides, "options")
    return config
