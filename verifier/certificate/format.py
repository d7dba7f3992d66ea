"""Proof certificates for ``unsat`` answers: the file format (version 2; version 1 lacks lemmas).  Needs numpy only.

A certificate is a ``.npz`` file (``numpy.savez_compressed``, read with ``allow_pickle=False``).

Key ``"meta"``: a 0-d numpy str array holding JSON::

    {"format": "relu-verifier-proof", "version": 1,
     "model_sha256": "<hex sha256 of the model file's bytes>",
     "spec_sha256": "<hex sha256 of the spec file's bytes>",
     "n_cases": <number of cases of the spec>,
     "relu_sizes": [n_1, ..., n_K]}

``relu_sizes`` are the sizes of the network's ReLU layers in order (``Network.relu_indices``); a layer's
neurons are the flat entries of its input (the pre-activation ``z``).  A *global neuron index* is
``g = n_1 + ... + n_{k-1} + j`` for entry ``j`` of layer ``k``; ``H = sum(relu_sizes)``.

For each case ``i`` of the spec (``vnnlib.spec``: an input box and unsafe polytopes ``A y <= b``), keys
``f"case{i}/<name>"``.  ``n_in`` is the number of inputs, ``R`` the largest row count of the case's
polytopes.  The search tree:

=================  ===========  ==========================================================================
``kind``           (N,) int8    the nodes in preorder (a node, its first child's subtree, its second
                                child's): 0 leaf, 1 input split, 2 ReLU split, 3 fork (1, 2 and 3 have
                                two children)
``arg``            (N,) int64   input split: the input dimension ``d``; ReLU split: the global neuron
                                ``g``; fork: the polytope ``p``; leaf: -1
``point``          (N,) float64 input split: the split point ``p``; NaN otherwise
``box``            (N,) int64   -1, or the row of ``box_lower``/``box_upper`` holding the node's
                                *contracted box*
``box_lower``,     (K, n_in)    contracted boxes
``box_upper``      float64
=================  ===========  ==========================================================================

Closures (a polytope ruled out at a node), ``M`` rows:

=====================  ============  ======================================================================
``close_node``         (M,) int64    the node (preorder index)
``close_poly``         (M,) int64    the polytope (index within the case)
``close_weights``      (M, R) f64    ``lambda >= 0`` over the polytope's rows (zero past its row count)
``close_alpha``        (M,) int64    -1: CROWN's adaptive lower slopes; else a row of ``alpha``
``close_beta``         (M,) int64    -1: no split multipliers; else a row of ``beta``
``close_on_box``       (M,) bool     bound over the node's contracted box (needs ``box >= 0``)
``close_nu``           (M,) int64    -1, or a row of ``nu``: then every ReLU's relaxation is replaced
``alpha``              (A, H) f32    lower-relaxation slopes in [0, 1], one per neuron (unstable ones used)
``beta``               (Bt, H) f32   split multipliers ``>= 0``, nonzero only on neurons split on the path
``nu``                 (Nn, H) f64   pre-activation coefficients (e.g. an LP's duals), any finite values
=====================  ============  ======================================================================

Contraction rows (linear cuts that shrink a node's box), ``Q`` rows: ``contract_node`` (Q,) int64,
``contract_poly`` (Q,) int64, ``contract_weights`` (Q, R) float64 (``lambda`` as above).

Meaning (``verifier.certificate.check`` verifies it).  The root's region is the case's box.  A node's
children start from its box, replaced by its contracted box intersected with it when ``box >= 0``; an
input split on ``d`` at ``p`` (``lo_d <= p <= hi_d``) gives the first child ``hi_d = p`` and the second
``lo_d = p``; a ReLU split on ``g`` (not split before on the path) gives the first child ``z_g <= 0`` and
the second ``z_g >= 0``; a fork on ``p`` gives two children with the node's region: the first answers
for polytope ``p`` only, the second for the others (one search per polytope).  At a node, a closure row
proves that the lower bound of ``sum_r lambda_r (A_r f(x) - b_r)`` over the node's region is ``> 0``
(``>= 0`` when a strict row has ``lambda_r > 0``), which rules the polytope out in the node's subtree.
The bound is the better of the rows' interval bound and one backward pass (CROWN, in rigorous
arithmetic) with the given slopes and multipliers, or, with ``nu``, with each ReLU ``c relu(z)`` replaced
by ``nu z + min over [l, u] of (c relu(z) - nu z)`` (the Lagrangian form: any ``nu`` is sound).
A contraction row gives a linear lower bound
``a . x + c`` of the same combination, so the polytope's points satisfy ``a . x <= -c``; propagated over
the node's box these cuts give a box per open polytope, and the contracted box must contain their hull.
Every leaf must have every polytope ruled out (or an empty region).

Lemmas (version 2): tightened pre-activation bounds that the case's tree may use, e.g. from the
refinement's searches.  Lemma group ``m`` of case ``i`` has keys ``f"case{i}/lemma{m}/<name>"``: a tree
with every table above, over the *cut network* whose output is the (flat) pre-activation of ReLU layer
``k`` (its ReLU layers are the network's first ones, so neuron indices and widths ``H`` are those of
that prefix), and its rows:

=================  ===========  ==========================================================================
``rows_layer``     (1,) int64   ``k`` (at least 1)
``rows_neuron``    (P,) int64   the neuron ``j`` of layer ``k`` of each row
``rows_side``      (P,) int8    ``+1`` or ``-1``
``rows_value``     (P,) f64     ``v``
``rows_claimed``   (P,) bool    the rows the tree proves
``rows_derive``    (1,) bool    a derived group (below)
=================  ===========  ==========================================================================

Row ``p`` is the one-row polytope ``side_p z_j <= v_p`` of the cut network's output.  A group's tree is
checked like a case's over the case's box, with only the claimed polytopes open at the root; then
``side_p z_j > v_p`` holds on the box and tightens ``z_j``'s bounds (``side = +1``: ``z_j >= v_p``;
``-1``: ``z_j <= -v_p``).  A *derived* group claims nothing and rules nothing out: its closures' rigorous
lower bounds ``b`` of ``side z_j - v``, whatever their sign, give row ``p`` the bound ``v + m``, with ``m``
the least, over the leaves of ``p``'s subtree whose region is not empty, of the greatest ``b`` of ``p`` on
the path from the root to the leaf (``-inf`` where there is none): ``side z_j >= v + m`` (e.g. a search
that stopped with subdomains open, its leaves closed by their own bounds; or a root alone); it may not
contract boxes (a contraction drops points outside the polytope, where its bound must hold too).  Groups are
checked in order, each from the bounds the earlier ones gave; the case's tree starts from all of them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

FORMAT_NAME = "relu-verifier-proof"
VERSION = 2
READABLE = (1, 2)  # versions this module reads (1: no lemmas)

# name -> (dtype, number of dimensions)
_ARRAYS: dict[str, tuple[type, int]] = {
    "kind": (np.int8, 1), "arg": (np.int64, 1), "point": (np.float64, 1), "box": (np.int64, 1),
    "box_lower": (np.float64, 2), "box_upper": (np.float64, 2),
    "close_node": (np.int64, 1), "close_poly": (np.int64, 1), "close_weights": (np.float64, 2),
    "close_alpha": (np.int64, 1), "close_beta": (np.int64, 1), "close_on_box": (np.bool_, 1),
    "close_nu": (np.int64, 1), "alpha": (np.float32, 2), "beta": (np.float32, 2), "nu": (np.float64, 2),
    "contract_node": (np.int64, 1), "contract_poly": (np.int64, 1), "contract_weights": (np.float64, 2),
}
# arrays whose first dimension must agree
_GROUPS = (
    ("kind", "arg", "point", "box"),
    ("box_lower", "box_upper"),
    ("close_node", "close_poly", "close_weights", "close_alpha", "close_beta", "close_on_box", "close_nu"),
    ("contract_node", "contract_poly", "contract_weights"),
)


class ProofFormatError(ValueError):
    """A certificate file or object that does not follow the format (one-line message)."""


def _empty(name: str) -> np.ndarray:
    dtype, ndim = _ARRAYS[name]
    return np.zeros((0,) * ndim, dtype=dtype)


def _table(name: str):
    return field(default_factory=lambda: _empty(name))


@dataclass(frozen=True, eq=False)
class CaseProof:
    """The search tree of one case and its closures (see the module docstring); tables default to empty."""

    kind: np.ndarray  # (N,) int8
    arg: np.ndarray  # (N,) int64
    point: np.ndarray  # (N,) float64
    box: np.ndarray  # (N,) int64
    box_lower: np.ndarray = _table("box_lower")  # (K, n_in)
    box_upper: np.ndarray = _table("box_upper")  # (K, n_in)
    close_node: np.ndarray = _table("close_node")  # (M,)
    close_poly: np.ndarray = _table("close_poly")  # (M,)
    close_weights: np.ndarray = _table("close_weights")  # (M, R)
    close_alpha: np.ndarray = _table("close_alpha")  # (M,)
    close_beta: np.ndarray = _table("close_beta")  # (M,)
    close_on_box: np.ndarray = _table("close_on_box")  # (M,)
    alpha: np.ndarray = _table("alpha")  # (A, H) float32
    beta: np.ndarray = _table("beta")  # (Bt, H) float32
    close_nu: np.ndarray | None = None  # (M,); None: -1 for every closure
    nu: np.ndarray = _table("nu")  # (Nn, H) float64
    contract_node: np.ndarray = _table("contract_node")  # (Q,)
    contract_poly: np.ndarray = _table("contract_poly")  # (Q,)
    contract_weights: np.ndarray = _table("contract_weights")  # (Q, R)

    def __post_init__(self) -> None:
        if self.close_nu is None:
            object.__setattr__(self, "close_nu", np.full(self.close_node.shape[0], -1, np.int64))
        for name, (dtype, ndim) in _ARRAYS.items():
            a = getattr(self, name)
            if not isinstance(a, np.ndarray) or a.dtype != np.dtype(dtype) or a.ndim != ndim:
                got = f"{a.dtype}, {a.ndim}-d" if isinstance(a, np.ndarray) else type(a).__name__
                raise ProofFormatError(f"'{name}' must be a {ndim}-d {np.dtype(dtype)} array, got {got}")
        for group in _GROUPS:
            rows = {getattr(self, n).shape[0] for n in group}
            if len(rows) > 1:
                raise ProofFormatError(f"arrays {', '.join(group)} have different lengths")
        if self.kind.shape[0] == 0:
            raise ProofFormatError("a case's tree needs at least its root")
        _same_width(self, "box_lower", "box_upper")
        _same_width(self, "close_weights", "contract_weights")
        _same_width(self, "alpha", "beta")
        _same_width(self, "alpha", "nu")

    def arrays(self) -> dict[str, np.ndarray]:
        """The arrays by name (the keys of the file without the case prefix)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _same_width(proof: CaseProof, a: str, b: str) -> None:
    x, y = getattr(proof, a), getattr(proof, b)
    if x.shape[0] and y.shape[0] and x.shape[1] != y.shape[1]:
        raise ProofFormatError(f"'{a}' and '{b}' have different widths ({x.shape[1]} and {y.shape[1]})")


_ROWS: dict[str, tuple[type, int]] = {
    "rows_layer": (np.int64, 1), "rows_neuron": (np.int64, 1), "rows_side": (np.int8, 1),
    "rows_value": (np.float64, 1), "rows_claimed": (np.bool_, 1), "rows_derive": (np.bool_, 1),
}


@dataclass(frozen=True, eq=False)
class LemmaProof:
    """One lemma group (see the module docstring): its tree over the cut network and its rows."""

    tree: CaseProof
    layer: int
    neuron: np.ndarray  # (P,) int64
    side: np.ndarray  # (P,) int8
    value: np.ndarray  # (P,) float64
    claimed: np.ndarray  # (P,) bool
    derive: bool = False

    def __post_init__(self) -> None:
        P = {a.shape for a in (self.neuron, self.side, self.value, self.claimed)}
        if len(P) != 1 or len(next(iter(P))) != 1:
            raise ProofFormatError("a lemma group's rows have different lengths")
        if self.layer < 1:
            raise ProofFormatError("a lemma group's layer must be at least 1")
        if not np.isin(self.side, (-1, 1)).all() or not np.all(np.isfinite(self.value)):
            raise ProofFormatError("a lemma row's side is not +-1 or its value is not finite")
        if self.derive and self.claimed.any():
            raise ProofFormatError("a derived lemma group claims nothing")

    def arrays(self) -> dict[str, np.ndarray]:
        return {**self.tree.arrays(), "rows_layer": np.array([self.layer], np.int64), "rows_neuron": self.neuron,
                "rows_side": self.side, "rows_value": self.value, "rows_claimed": self.claimed,
                "rows_derive": np.array([self.derive])}


@dataclass(frozen=True, eq=False)
class Proof:
    """A whole certificate: the meta record, one ``CaseProof`` per case of the spec, and per case its
    lemma groups (in the order they are checked)."""

    meta: dict
    cases: tuple[CaseProof, ...]
    lemmas: tuple[tuple[LemmaProof, ...], ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "cases", tuple(self.cases))
        object.__setattr__(self, "lemmas", tuple(tuple(g) for g in self.lemmas) or tuple(() for _ in self.cases))
        _check_meta(self.meta)
        if self.meta["n_cases"] != len(self.cases) or len(self.lemmas) != len(self.cases):
            raise ProofFormatError(f"meta says {self.meta['n_cases']} cases, the certificate has {len(self.cases)}")

    @classmethod
    def from_arrays(cls, meta: dict, cases: Sequence[Mapping[str, np.ndarray]]) -> Proof:
        """A proof from per-case mappings of array name (without the case prefix) to array; a case's lemma
        groups are its keys ``lemma{m}/<name>``."""
        trees, lemmas = [], []
        for i, c in enumerate(cases):
            own = {k: v for k, v in c.items() if not k.startswith("lemma")}
            groups: dict[int, dict[str, np.ndarray]] = {}
            for k, v in c.items():
                if k.startswith("lemma"):
                    head, _, name = k.partition("/")
                    if not head[5:].isdigit() or not name:
                        raise ProofFormatError(f"case {i}: unknown array '{k}'")
                    groups.setdefault(int(head[5:]), {})[name] = v
            if sorted(groups) != list(range(len(groups))):
                raise ProofFormatError(f"case {i}: lemma groups are not numbered 0, 1, ...")
            trees.append(_case_from(own, f"case {i}"))
            lemmas.append(tuple(_lemma_from(groups[m], f"case {i} lemma {m}") for m in range(len(groups))))
        return cls(meta, tuple(trees), tuple(lemmas))


def proof_meta(model_sha256: str, spec_sha256: str, n_cases: int, relu_sizes: Sequence[int]) -> dict:
    """The meta record of a certificate of the current version."""
    return {"format": FORMAT_NAME, "version": VERSION, "model_sha256": model_sha256, "spec_sha256": spec_sha256,
            "n_cases": int(n_cases), "relu_sizes": [int(n) for n in relu_sizes]}


def empty_case_proof(n_in: int, R: int, H: int) -> CaseProof:
    """A tree that is only its root (a leaf), with empty tables of the right widths."""
    return CaseProof(
        kind=np.zeros(1, np.int8), arg=np.full(1, -1, np.int64), point=np.full(1, np.nan), box=np.full(1, -1, np.int64),
        box_lower=np.zeros((0, n_in)), box_upper=np.zeros((0, n_in)), close_weights=np.zeros((0, R)),
        alpha=np.zeros((0, H), np.float32), beta=np.zeros((0, H), np.float32), contract_weights=np.zeros((0, R)),
    )


def save_proof(path: str | os.PathLike, proof: Proof) -> None:
    """Write ``proof`` to ``path`` (exactly that name; no ``.npz`` is appended)."""
    arrays = {"meta": np.array(json.dumps(proof.meta))}
    for i, case in enumerate(proof.cases):
        arrays.update({f"case{i}/{k}": v for k, v in case.arrays().items()})
        for m, group in enumerate(proof.lemmas[i]):
            arrays.update({f"case{i}/lemma{m}/{k}": v for k, v in group.arrays().items()})
    with open(path, "wb") as f:
        np.savez_compressed(f, **arrays)


def load_proof(path: str | os.PathLike) -> Proof:
    """Read a certificate; ``ProofFormatError`` if it is unreadable or does not follow the format."""
    try:
        with np.load(Path(path), allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except OSError as e:
        raise ProofFormatError(f"cannot read certificate {os.fspath(path)}: {e.strerror or e}") from None
    except Exception as e:  # not a zip, pickled arrays, corrupt members
        raise ProofFormatError(f"{os.fspath(path)} is not a certificate file: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict) or "meta" not in data:
        raise ProofFormatError("certificate has no 'meta' record")
    m = data.pop("meta")
    if m.shape != () or m.dtype.kind != "U":
        raise ProofFormatError("certificate 'meta' must be a 0-d str array")
    try:
        meta = json.loads(str(m))
    except ValueError:
        raise ProofFormatError("certificate 'meta' is not JSON") from None
    _check_meta(meta)
    n = meta["n_cases"]
    cases = []
    for i in range(n):
        prefix = f"case{i}/"
        cases.append({k[len(prefix):]: data.pop(k) for k in list(data) if k.startswith(prefix)})
    if data:
        raise ProofFormatError(f"certificate has unexpected arrays: {', '.join(sorted(data)[:5])}")
    return Proof.from_arrays(meta, cases)


def _case_from(arrays: Mapping[str, np.ndarray], where: str) -> CaseProof:
    missing = [k for k in ("kind", "arg", "point", "box") if k not in arrays]
    unknown = sorted(set(arrays) - set(_ARRAYS))
    if missing or unknown:
        what = f"missing '{missing[0]}'" if missing else f"unknown array '{unknown[0]}'"
        raise ProofFormatError(f"{where}: {what}")
    try:
        return CaseProof(**dict(arrays))
    except ProofFormatError as e:
        raise ProofFormatError(f"{where}: {e}") from None


def _lemma_from(arrays: Mapping[str, np.ndarray], where: str) -> LemmaProof:
    rows = {}
    for name, (dtype, ndim) in _ROWS.items():
        a = arrays.get(name)
        if not isinstance(a, np.ndarray) or a.dtype != np.dtype(dtype) or a.ndim != ndim:
            raise ProofFormatError(f"{where}: '{name}' missing or not a {ndim}-d {np.dtype(dtype)} array")
        rows[name] = a
    if rows["rows_layer"].shape != (1,) or rows["rows_derive"].shape != (1,):
        raise ProofFormatError(f"{where}: 'rows_layer' and 'rows_derive' hold one value each")
    try:
        return LemmaProof(_case_from({k: v for k, v in arrays.items() if k not in _ROWS}, where),
                          int(rows["rows_layer"][0]), rows["rows_neuron"], rows["rows_side"], rows["rows_value"],
                          rows["rows_claimed"], bool(rows["rows_derive"][0]))
    except ProofFormatError as e:
        raise ProofFormatError(f"{where}: {e}") from None


def _check_meta(meta: object) -> None:
    if not isinstance(meta, dict):
        raise ProofFormatError("certificate 'meta' must be a JSON object")
    if meta.get("format") != FORMAT_NAME:
        raise ProofFormatError(f"not a {FORMAT_NAME} certificate (format {meta.get('format')!r})")
    if meta.get("version") not in READABLE:
        raise ProofFormatError(f"unsupported certificate version {meta.get('version')!r} (this checker reads "
                               f"{', '.join(map(str, READABLE))})")
    for key in ("model_sha256", "spec_sha256"):
        if not isinstance(meta.get(key), str):
            raise ProofFormatError(f"certificate 'meta' needs a string '{key}'")
    n = meta.get("n_cases")
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise ProofFormatError("certificate 'meta' needs a non-negative integer 'n_cases'")
    sizes = meta.get("relu_sizes")
    if not isinstance(sizes, list) or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0
                                              for s in sizes):
        raise ProofFormatError("certificate 'meta' needs 'relu_sizes', a list of non-negative integers")
