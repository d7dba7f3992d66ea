"""Read VNN-LIB 2.0 text (a query over one network) into a ``Spec`` (numpy only).

``reader.parse_spec`` sends here every text whose first command is ``(vnnlib-version <2.x>)``;
the meaning of the asserts (normal form, input box, output polytopes, strict rows, ``==``) is
the 1.0 reader's, which this one extends: see ``vnnlib.reader``.

Language accepted (the VNN-LIB 2.0 grammar, ``syntax/grammar.cf`` of the standard, for one network)
----------------------------------------------------------------------------------------------------
* ``(vnnlib-version <2.0>)`` first, then one ``(declare-network N (declare-input X T [d0,...])
  (declare-output Y T [d0,...]))``, then the ``(assert F)`` commands.  ``;`` starts a comment.
* ``T`` is an element type: ``Real`` (or ``real``), ``float16``, ``bfloat16``, ``float32`` or
  ``float64``.  It is remembered (``TensorDecl.dtype``) and written back in a counterexample.
* Variables: ``X[i0,...,ik]`` with one zero-based index per declared dimension (blanks are allowed
  around the brackets and commas), or ``X`` alone when the shape is ``[]``.  ``X[i0,...,ik]`` is
  entry ``i0 * d1 * ... * dk + ... + ik`` (row-major) of the flat input the ``Spec`` uses, the
  order in which the model reads its input tensor; outputs likewise.
* Formulas: ``(and F ...)``, ``(or F ...)`` nested freely, and the comparisons ``<=``, ``>=``,
  ``<``, ``>``, ``==`` and ``!=`` between two linear terms.  ``==`` on outputs gives two rows and on
  an input fixes it; ``(!= a b)`` over outputs is ``(or (< a b) (> a b))``, exactly.
* Terms: numbers, variables, ``(+ t ...)``, ``(- t)``, ``(- t t ...)`` (left-associative) and
  ``(* t ...)`` with at most one factor that is not a constant.

Choices where the standard leaves room (the reading a VNN-COMP 2026 user would expect)
--------------------------------------------------------------------------------------
* Numbers: the grammar's numerals are plain decimals; scientific notation (``5.81e-05``), as the
  earlier 2.0 drafts and every 1.0 file have it, is read too.  A numeral denotes the nearest float64.
* ``=`` is read as ``==`` (the standard's prose writes ``=``, its grammar ``==``); ``/`` by a
  constant, ``true``/``false``, chained comparisons and ``(and)``/``(or)`` are read as in 1.0.
* The version: any ``<2.x>`` (``2.x`` without brackets too) selects this reader; a minor version
  above 0 adds nothing this reader knows of.
* The model is given to the reader only as its numbers of inputs and outputs: the declared shapes
  must have as many entries, and the declared element type is not compared with the model's.
* An ONNX node name after a declaration (``"name"``, as earlier drafts allowed) is accepted and
  ignored: with one input and one output there is nothing to map.

Unsupported (a one-line ``SpecError`` whose message says ``unsupported``): a second
``declare-network`` (multi-network queries, ``equal-to``, ``isomorphic-to``), several inputs or
outputs, ``declare-hidden``, ``initialized`` inputs, element types that are not floating point,
products of variables, atoms that mix inputs and outputs or relate several inputs, ``!=`` on
inputs, and every other command (``declare-const``, ``check-sat``, ...).  Every error message of a
text names its line and column.
"""

from __future__ import annotations

import itertools
import re

from vnnlib.reader import _NUMBER, _combine, _List, _Located, _Reader
from vnnlib.spec import SpecError, TensorDecl

# tokens: comment | "string" | name [bracket] | [bracket] | paren | atom | any other character (an error later)
_TOKEN = re.compile(
    r';[^\n]*|"(?:[^"\\\n]|\\.)*"|[A-Za-z][A-Za-z0-9_]*\s*\[[^\[\]();"]*\]|\[[^\[\]();"]*\]|[()]|[^\s()\[\];"]+|\S'
)
_BLANK = re.compile(r"\s")
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*\Z")
_ELEMENT = re.compile(r"([A-Za-z][A-Za-z0-9_]*)(?:\[([^\]]*)\])?\Z")
_VERSION = re.compile(r"<?([0-9]+)\.([0-9]+)>?\Z")
_FLOAT_TYPES = frozenset({"real", "float16", "bfloat16", "float32", "float64"})
_OTHER_TYPES = frozenset({
    "float8e4m3fn", "float8e5m2", "float8e4m3fnuz", "float8e5m2fnuz", "float4e2m1", "int4", "uint4", "int8",
    "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "complex64", "complex128", "bool", "string",
})
_CMP = frozenset({"<=", ">=", "<", ">", "==", "="})
_KIND = {"declare-input": "X", "declare-output": "Y"}
_WHAT = {"X": "input", "Y": "output"}


def _tokenize(text: str) -> list[str]:
    """Tokens without comments.  A name and the bracket after it are one token, without blanks:
    ``X [0, 2]`` is ``X[0,2]``, and a declaration's ``Real [1,5]`` is ``Real[1,5]``."""
    toks = _TOKEN.findall(text)
    if ";" in text:
        toks = [t for t in toks if t[0] != ";"]
    return [t if "[" not in t or not _BLANK.search(t) else "".join(t.split()) for t in toks]


def _shape(text: str, tok: int) -> tuple[int, ...]:
    """The dimensions of a shape token ``[d0,d1]`` (``[]``: a scalar)."""
    if not (text.startswith("[") and text.endswith("]")):
        raise _Located(f"expected a shape like [1,5], got {text!r}", tok)
    inner = "".join(text[1:-1].split())
    if not inner:
        return ()
    parts = inner.split(",")
    if not all(p.isdigit() and p.isascii() for p in parts):
        raise _Located(f"bad shape {text!r}: dimensions are positive integers separated by commas", tok)
    dims = tuple(int(p) for p in parts)
    if 0 in dims:
        raise _Located(f"bad shape {text!r}: a dimension is 0", tok)
    return dims


class Reader2(_Reader):
    """The 1.0 reader with 2.0's commands, indexed variables, ``==`` and ``!=``."""

    cmp_ops = _CMP

    def __init__(self, text: str, max_conjuncts: int) -> None:
        super().__init__(_tokenize(text), max_conjuncts)
        self.version = ""
        self.network = ""
        self.decls: dict[str, TensorDecl] = {}  # "X" / "Y" -> declaration
        self.decl_at: dict[str, int] = {}  # "X" / "Y" -> token of the declared name
        self.tensors: dict[str, tuple[str, TensorDecl]] = {}  # declared name -> (kind, declaration)
        self.names: dict[str, int] = {}  # every name declared (network, tensors) -> its token

    def locate(self, text: str, tok: int) -> tuple[int, int]:
        offsets = (m.start() for m in _TOKEN.finditer(text) if m.group()[0] != ";")
        offset = next(itertools.islice(offsets, tok, None), len(text))
        return text.count("\n", 0, offset) + 1, offset - text.rfind("\n", 0, offset)

    # ---- commands -----------------------------------------------------------------
    def _command(self, node: _List) -> None:
        items = node.items
        if not items or not isinstance(items[0], int):
            raise _Located("expected a command name after '('", node.tok)
        name = self.toks[items[0]]
        if name == "vnnlib-version":
            self._version(node)
        elif name == "declare-network":
            self._network(node)
        elif name == "assert":
            super()._command(node)
        else:
            raise _Located(
                f"unsupported: unknown command {name!r} "
                "(VNN-LIB 2.0 has vnnlib-version, declare-network and assert)", items[0])

    def _declare(self, name_tok: int, sort_tok: int) -> None:  # the 1.0 reader's fast path for declare-const
        raise _Located("unsupported: unknown command 'declare-const' (VNN-LIB 2.0 declares variables "
                       "in declare-network)", name_tok - 1)

    def _version(self, node: _List) -> None:
        if self.version:
            raise _Located("vnnlib-version is given twice", node.tok)
        self._arity(node, "vnnlib-version", len(node.items) - 1, 1)
        arg = node.items[1]
        m = _VERSION.match(self.toks[arg]) if isinstance(arg, int) else None
        if m is None:
            raise _Located("expected a version like <2.0>", arg if isinstance(arg, int) else arg.tok)
        if m.group(1) != "2":
            raise _Located(f"unsupported: VNN-LIB version {self.toks[arg]} (this reader reads 1.0 and 2.x)", arg)
        self.version = f"{m.group(1)}.{m.group(2)}"

    def _network(self, node: _List) -> None:
        items = node.items
        if self.network:
            raise _Located("unsupported: a second declare-network (queries over several networks)", items[0])
        if "assert" in self.toks[: node.tok]:
            raise _Located("declare-network must come before the asserts", items[0])
        if len(items) < 2 or not isinstance(items[1], int) or not _NAME.match(self.toks[items[1]]):
            raise _Located("declare-network takes a name, then its input and output declarations", node.tok)
        self._name(items[1])
        self.network = self.toks[items[1]]
        for child in items[2:]:
            self._network_part(child)
        for kind in ("X", "Y"):
            if kind not in self.decls:
                raise _Located(f"network {self.network} declares no {_WHAT[kind]} (declare-{_WHAT[kind]} ...)",
                               node.tok)

    def _network_part(self, node) -> None:
        if not isinstance(node, _List) or not node.items or not isinstance(node.items[0], int):
            raise _Located("expected (declare-input ...) or (declare-output ...) in declare-network",
                           node if isinstance(node, int) else node.tok)
        head = self.toks[node.items[0]]
        if head in ("equal-to", "isomorphic-to"):
            raise _Located(f"unsupported: {head} (relations between several networks)", node.items[0])
        if head == "declare-hidden":
            raise _Located("unsupported: declare-hidden (constraints on hidden nodes)", node.items[0])
        if head not in _KIND:
            raise _Located(f"unknown declaration {head!r} in declare-network", node.items[0])
        kind = _KIND[head]
        if kind in self.decls:
            raise _Located(f"unsupported: a second {head} (networks with several {_WHAT[kind]}s)", node.items[0])
        if kind == "X" and "Y" in self.decls:
            raise _Located("declare-input must come before declare-output", node.items[0])
        self._tensor(node, head, kind)

    def _tensor(self, node: _List, head: str, kind: str) -> None:
        items = node.items
        usage = f"{head} takes a name, an element type and a shape, e.g. ({head} X float32 [1,5])"
        if len(items) < 3 or not all(isinstance(a, int) for a in items[1:]):
            raise _Located(usage, node.tok)
        name_tok, type_tok = items[1], items[2]
        if not _NAME.match(self.toks[name_tok]):
            raise _Located(f"bad variable name {self.toks[name_tok]!r}", name_tok)
        dtype, bracket, dims = self.toks[type_tok].partition("[")  # the tokenizer joins "Real [1,5]"
        if bracket:
            shape_text, shape_tok, rest = bracket + dims, type_tok, items[3:]
        elif len(items) >= 4:
            shape_text, shape_tok, rest = self.toks[items[3]], items[3], items[4:]
        else:
            raise _Located(usage, node.tok)
        self._element_type(dtype, type_tok)
        shape = _shape(shape_text, shape_tok)
        for opt in rest:
            text = self.toks[opt]
            if text == "initialized":
                raise _Located("unsupported: initialized inputs", opt)
            if not (text.startswith('"') and len(text) > 1 and text.endswith('"')):
                raise _Located(f"unexpected {text!r} in {head}", opt)
        self._name(name_tok)
        decl = TensorDecl(self.toks[name_tok], dtype, shape)
        self.decls[kind] = decl
        self.decl_at[kind] = name_tok
        self.tensors[decl.name] = (kind, decl)

    def _element_type(self, dtype: str, tok: int) -> None:
        if dtype.lower() in _FLOAT_TYPES:
            return
        if dtype.lower() in _OTHER_TYPES:
            raise _Located(f"unsupported: element type {dtype} (floating-point types and Real are supported)", tok)
        raise _Located(f"unknown element type {dtype!r}", tok)

    def _name(self, tok: int) -> None:
        name = self.toks[tok]
        if name in self.names:
            raise _Located(f"{name} is declared twice", tok)
        self.names[name] = tok

    # ---- formulas and terms -------------------------------------------------------
    def _dnf(self, node, depth: int) -> list[tuple]:
        if isinstance(node, _List) and node.items and isinstance(node.items[0], int):
            if self.toks[node.items[0]] == "!=":
                return self._not_equal(node, depth)
        return super()._dnf(node, depth)

    def _not_equal(self, node: _List, depth: int) -> list[tuple]:
        """``(!= a b)`` over outputs: the disjunction of ``a < b`` and ``a > b``."""
        args = node.items[1:]
        if len(args) != 2:
            raise _Located(f"wrong arity: '!=' takes 2 arguments, got {len(args)}", node.tok)
        lhs, rhs = self._term(args[0], depth + 1), self._term(args[1], depth + 1)
        inputs = sorted(key for key, a in _combine(lhs, rhs, -1.0)[0].items() if a != 0.0 and key[0] == "X")
        if inputs:
            raise _Located(f"unsupported: '!=' on input variables ({self._names(inputs)}); "
                           "an input box cannot leave out a point", node.tok)
        sides = (self._atom("<", lhs, rhs, node.tok), self._atom(">", lhs, rhs, node.tok))
        return [atoms for atoms in sides if atoms is not None]

    def _leaf(self, tok: int):
        text = self.toks[tok]
        if text not in self.vars and not _NUMBER.match(text):
            key = self._element(text, tok)
            if key is not None:
                self.vars[text] = key  # the next occurrence takes the 1.0 reader's fast paths
        return super()._leaf(tok)

    def _element(self, text: str, tok: int) -> tuple[str, int] | None:
        """``(kind, flat index)`` of a variable reference, None if ``text`` is no name."""
        m = _ELEMENT.match(text)
        if m is None:
            return None
        name, index = m.group(1), m.group(2)
        if name not in self.tensors:
            if name in self.names:
                raise _Located(f"{name} is the network's name, not a variable", tok)
            if index is None and not self.network:
                return None  # the 1.0 reader's "unknown symbol"
            where = "" if self.network else " (no declare-network before this assert)"
            raise _Located(f"undeclared variable {name}{where}", tok)
        kind, decl = self.tensors[name]
        if index is None:
            if decl.shape:
                raise _Located(f"{name} has shape [{','.join(map(str, decl.shape))}]: name one entry, "
                               f"e.g. {decl.element(0)}", tok)
            return kind, 0
        parts = [p.strip() for p in index.split(",")]
        if not all(p.isdigit() and p.isascii() for p in parts):
            raise _Located(f"bad index {text!r}: indices are non-negative integers separated by commas", tok)
        idx = [int(p) for p in parts]
        if len(idx) != len(decl.shape):
            raise _Located(f"{text} has {len(idx)} index(es), {decl.header()} has {len(decl.shape)} "
                           "dimension(s)", tok)
        flat = 0
        for i, d in zip(idx, decl.shape):
            if i >= d:
                raise _Located(f"index out of range: {text} for {decl.header()}", tok)
            flat = flat * d + i
        return kind, flat

    # ---- the Spec -----------------------------------------------------------------
    def var_name(self, kind: str, i: int) -> str:
        decl = self.decls.get(kind)
        return f"{kind}_{i}" if decl is None else decl.element(i)

    def sizes(self, n_inputs: int | None, n_outputs: int | None) -> tuple[int, int]:
        if not self.network:
            raise SpecError("declares no network (declare-network NAME (declare-input ...) (declare-output ...))")
        for kind, model in (("X", n_inputs), ("Y", n_outputs)):
            decl = self.decls[kind]
            if model is not None and model != decl.size:
                raise _Located(f"spec declares {_WHAT[kind]} {decl.header()} ({decl.size} values) but the model "
                               f"has {model} {_WHAT[kind]}s", self.decl_at[kind])
        return self.decls["X"].size, self.decls["Y"].size

    def spec_fields(self) -> dict:
        return {"version": self.version, "network": self.network, "input_decl": self.decls["X"],
                "output_decl": self.decls["Y"]}
