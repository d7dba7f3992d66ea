"""Read VNN-LIB 1.0 text into a ``Spec`` (numpy only).

A text whose first command is ``(vnnlib-version <2.x>)`` is VNN-LIB 2.0: ``parse_spec``
hands it to ``vnnlib.reader2``, which reads 2.0's declarations and indexed variables and
gives its asserts the meaning below.  Every other text is read as 1.0.

Language accepted
-----------------
* Commands: ``(declare-const X_i Real)``, ``(declare-const Y_j Real)`` and
  ``(assert F)``.  ``(check-sat)``, ``(get-model)``, ``(exit)`` and
  ``(set-logic L)`` are accepted and ignored.  ``;`` starts a comment.
* Formulas: ``(and F ...)``, ``(or F ...)`` (nested freely; ``(and)`` is true,
  ``(or)`` is false), ``true``, ``false`` and the comparisons ``<=``, ``>=``,
  ``<``, ``>``, ``=``.  A comparison with more than two arguments is chained as
  in SMT-LIB: ``(<= a b c)`` means ``a <= b`` and ``b <= c``.
* Terms: numbers (``5``, ``-0.5``, ``5.81e-05``), declared variables and the
  linear operators ``(+ t ...)``, ``(- t)``, ``(- t t ...)``, ``(* c t)`` and
  ``(/ t c)`` with constant ``c``.  Numbers denote the nearest float64, and
  linear forms are combined in float64, as the networks themselves compute.

Meaning
-------
The conjunction of all asserts is put into disjunctive normal form.  In each
conjunct, atoms over inputs only must be single-variable bounds (``X_i <= c``,
``c <= X_i``, ``(* 2 X_i) >= c``, ...); they form the input box.  Every atom over
outputs only is one row ``a . y <= b`` of the conjunct's polytope.  An atom that
relates two input variables, or mixes inputs and outputs, is rejected as
unsupported.  Atoms without variables evaluate to true or false.

* ``=`` on outputs gives two rows ``a.y <= b`` and ``-a.y <= -b``; on an input it
  fixes both bounds.
* ``<`` / ``>`` on outputs give a closed row flagged in ``Polytope.strict``
  (closed for proofs, strict when a counterexample is checked).  On inputs the
  bound is read as its closure: the box then includes a face that the spec
  excludes, which keeps proofs sound; a warning is logged because a
  counterexample lying exactly on that face would not be a true one.
* A conjunct without output atoms is unsafe everywhere on its box: its polytope
  has zero rows.
* Conjuncts with the same input box form one ``Case`` with several polytopes.
* An input box with lower > upper is an error when one assert (or the
  unconditional, single-disjunct asserts together) implies it: that is a typo,
  not a property.  A box that becomes empty only when disjuncts of different
  asserts are intersected holds no input and is dropped.
* A false assert (for instance ``(assert (<= 1 0))``) makes the unsafe region
  empty: the ``Spec`` then has no cases (the property holds trivially).
* Variables must be declared before use, be named ``X_i`` / ``Y_j`` and be
  numbered from 0 without gaps; every input needs a lower and an upper bound in
  every case.  A spec without any output atom is allowed (every input of the
  box is a counterexample).

Errors raise ``SpecError`` with a one-line message ``source:line:column: what``.
"""

from __future__ import annotations

import gzip
import itertools
import logging
import math
import os
import re
import zlib
from pathlib import Path
from typing import NamedTuple

import numpy as np

from vnnlib.spec import Case, Polytope, Spec, SpecError

logger = logging.getLogger(__name__)

MAX_CONJUNCTS = 1_000_000  # default cap on the size of the disjunctive normal form
MAX_DEPTH = 200  # deepest nesting of formulas and terms

_TOKEN = re.compile(r";[^\n]*|[()]|[^\s();]+")  # used to locate tokens for error messages
_COMMENT = re.compile(r";[^\n]*")
_NUMBER = re.compile(r"[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?\Z")
_VAR = re.compile(r"([XY])_(0|[1-9][0-9]*)\Z")
_CMP = frozenset({"<=", ">=", "<", ">", "="})
_EQ = frozenset({"=", "=="})  # "==" is VNN-LIB 2.0's spelling
_PARENS = frozenset({"(", ")"})
_IGNORED = {"check-sat": 0, "get-model": 0, "exit": 0, "set-logic": 1}


class _Located(Exception):
    """A parse error at a token index (turned into ``source:line:col`` later)."""

    def __init__(self, message: str, tok: int) -> None:
        super().__init__(message)
        self.tok = tok


class _List(NamedTuple):
    tok: int  # index of the '(' token
    items: list  # children: token indices (atoms) or _List


class _Bound(NamedTuple):
    index: int  # input variable
    upper: bool  # True: X_index <= value, False: X_index >= value
    value: float
    tok: int


class _Row(NamedTuple):
    coefs: tuple  # ((output index, coefficient), ...)
    b: float
    strict: bool


_Term = tuple  # (dict[(kind, index)] -> coefficient, constant)


def _tokenize(text: str) -> list[str]:
    """Tokens of ``text`` without comments (the same tokens as ``_TOKEN`` finds)."""
    if ";" in text:
        text = _COMMENT.sub(" ", text)
    return text.replace("(", " ( ").replace(")", " ) ").split()  # 5x faster than findall


def _locate(text: str, tok: int) -> tuple[int, int]:
    """1-based line and column of the ``tok``-th token (comments skipped)."""
    offsets = (m.start() for m in _TOKEN.finditer(text) if m.group()[0] != ";")
    offset = next(itertools.islice(offsets, tok, None), len(text))
    line = text.count("\n", 0, offset) + 1
    return line, offset - text.rfind("\n", 0, offset)


def _build(toks: list[str], start: int) -> tuple[_List, int]:
    """The list opened at ``toks[start]`` and the index just after its ')'."""
    stack: list[_List] = []
    i, n = start, len(toks)
    while i < n:
        t = toks[i]
        if t == "(":
            if i + 4 < n and toks[i + 4] == ")" and toks[i + 2] not in _PARENS and toks[i + 3] not in _PARENS:
                if toks[i + 1] not in _PARENS and stack:  # (op a b): the bulk of a spec, taken whole
                    stack[-1].items.append(_List(i, [i + 1, i + 2, i + 3]))
                    i += 5
                    continue
            stack.append(_List(i, []))
        elif t == ")":
            done = stack.pop()
            if not stack:
                return done, i + 1
            stack[-1].items.append(done)
        else:
            stack[-1].items.append(i)
        i += 1
    raise _Located("unbalanced parentheses: this '(' is never closed", stack[0].tok)


def _combine(lhs: _Term, rhs: _Term, scale: float) -> _Term:
    """``lhs + scale * rhs`` for linear terms."""
    coefs = dict(lhs[0])
    for key, a in rhs[0].items():
        coefs[key] = coefs.get(key, 0.0) + scale * a
    return coefs, lhs[1] + scale * rhs[1]


def _scaled(term: _Term, s: float) -> _Term:
    return {k: s * a for k, a in term[0].items()}, s * term[1]


def _flat_name(kind: str, i: int) -> str:
    """A VNN-LIB 1.0 variable name: ``X_3``."""
    return f"{kind}_{i}"


class _Reader:
    """Walks the tokens once, collecting declarations and the DNF of the asserts."""

    cmp_ops = _CMP  # the comparison operators of the language read

    def __init__(self, toks: list[str], max_conjuncts: int) -> None:
        self.toks = toks
        self.max_conjuncts = max_conjuncts
        self.vars: dict[str, tuple[str, int]] = {}
        self.decl_tok: dict[tuple[str, int], int] = {}
        self.common: list = []  # atoms of single-disjunct asserts: in every conjunct
        self.factors: list[list[tuple]] = []  # DNFs (>= 2 conjuncts) to multiply out
        self.is_false = False
        self.strict_inputs = False

    # ---- commands -----------------------------------------------------------------
    def run(self) -> None:
        toks, n, i = self.toks, len(self.toks), 0
        cmp_ops = self.cmp_ops
        while i < n:
            t = toks[i]
            if t != "(":
                what = "unexpected ')'" if t == ")" else f"expected '(' to start a command, got {t!r}"
                raise _Located(("unbalanced parentheses: " if t == ")" else "") + what, i)
            # fast paths for the two shapes that make up almost all of every file
            if (
                i + 7 < n
                and toks[i + 1] == "assert"
                and toks[i + 2] == "("
                and toks[i + 3] in cmp_ops
                and toks[i + 6] == ")"
                and toks[i + 7] == ")"
                and toks[i + 4] not in _PARENS
                and toks[i + 5] not in _PARENS
            ):
                bound = self._input_bound(toks[i + 3], i + 4, i + 2)
                if bound is not None:
                    self.common.extend(bound)
                else:
                    atoms = self._atom(toks[i + 3], self._leaf(i + 4), self._leaf(i + 5), i + 2)
                    self._add_assert([] if atoms is None else [atoms])
                i += 8
            elif toks[i + 1:i + 4] == ["assert", "(", "or"] and (end := self._or_of_ands(i)) is not None:
                i = end
            elif (
                i + 4 < n
                and toks[i + 1] == "declare-const"
                and toks[i + 4] == ")"
                and toks[i + 2] not in _PARENS
                and toks[i + 3] not in _PARENS
            ):
                self._declare(i + 2, i + 3)
                i += 5
            else:
                node, i = _build(toks, i)
                self._command(node)

    def _or_of_ands(self, i: int) -> int | None:
        """``(assert (or (and (op a b) ...) ...))`` with every ``a``, ``b`` a name or a number (a spec of
        many boxes): its DNF added, and the index after it; None (nothing added) for any other shape or any
        error, which the general path then reads (and reports)."""
        toks, cmp_ops, dnf, j = self.toks, self.cmp_ops, [], i + 4
        try:
            while toks[j] == "(":
                if toks[j + 1] != "and":
                    return None
                j += 2
                conj: tuple = ()
                alive = True
                while toks[j] == "(":
                    op = toks[j + 1]
                    if op not in cmp_ops or toks[j + 4] != ")" or toks[j + 2] in _PARENS or toks[j + 3] in _PARENS:
                        return None
                    atoms = self._input_bound(op, j + 2, j) or self._output_bound(op, j + 2)
                    if atoms is None:
                        atoms = self._atom(op, self._leaf(j + 2), self._leaf(j + 3), j)
                    if atoms is None:
                        alive = False
                    else:
                        conj += atoms
                    j += 5
                if toks[j] != ")":
                    return None
                j += 1
                if alive:
                    dnf.append(conj)
                if len(dnf) > self.max_conjuncts:
                    return None
            if toks[j] != ")" or toks[j + 1] != ")":
                return None
            self._add_assert(dnf)
        except (IndexError, _Located):
            return None
        return j + 2

    def _var_number(self, var_tok: int, kind: str) -> tuple[int, float] | None:
        """``(index, value)`` when tokens ``var_tok``, ``var_tok + 1`` are a declared ``kind`` variable and a
        finite number (else None: the atom takes the general path, which reports what is wrong)."""
        key = self.vars.get(self.toks[var_tok])
        number = self.toks[var_tok + 1]
        if key is None or key[0] != kind or not _NUMBER.match(number):
            return None
        value = float(number)
        return (key[1], value) if math.isfinite(value) else None

    def _input_bound(self, op: str, var_tok: int, tok: int) -> tuple | None:
        """``(op X_i number)`` as bounds, or None if the atom has another shape."""
        got = self._var_number(var_tok, "X")
        if got is None:
            return None
        i, value = got[0], got[1] + 0.0  # + 0.0 turns -0.0 into 0.0, as in _atom
        if op in _EQ:
            return _Bound(i, True, value, tok), _Bound(i, False, value, tok)
        if op in ("<", ">"):
            self.strict_inputs = True
        return (_Bound(i, op in ("<=", "<"), value, tok),)

    def _output_bound(self, op: str, var_tok: int) -> tuple | None:
        """``(op Y_j number)`` as rows, exactly as ``_atom`` makes them, or None if the atom has another shape."""
        got = self._var_number(var_tok, "Y")
        if got is None:
            return None
        j, value = got
        if op in (">=", ">"):  # v - y_j (op') 0
            return (_Row(((j, -1.0),), 0.0 - value, op == ">"),)
        b = value + 0.0
        if op in _EQ:
            return _Row(((j, 1.0),), b, False), _Row(((j, -1.0),), -b, False)
        return (_Row(((j, 1.0),), b, op == "<"),)

    def _command(self, node: _List) -> None:
        items = node.items
        if not items or not isinstance(items[0], int):
            raise _Located("expected a command name after '('", node.tok)
        name = self.toks[items[0]]
        nargs = len(items) - 1
        if name == "assert":
            self._arity(node, name, nargs, 1)
            self._add_assert(self._dnf(items[1], 0))
        elif name == "declare-const":
            self._arity(node, name, nargs, 2)
            if not (isinstance(items[1], int) and isinstance(items[2], int)):
                raise _Located("declare-const takes a name and a sort, e.g. (declare-const X_0 Real)", node.tok)
            self._declare(items[1], items[2])
        elif name in _IGNORED:
            self._arity(node, name, nargs, _IGNORED[name])
        elif name in ("vnnlib-version", "declare-network"):
            raise _Located(f"unexpected command {name!r}: a VNN-LIB 2.0 file starts with (vnnlib-version <2.0>)",
                           items[0])
        else:
            raise _Located(f"unknown command {name!r} (expected declare-const or assert)", items[0])

    def _arity(self, node: _List, name: str, nargs: int, expected: int) -> None:
        if nargs != expected:
            raise _Located(f"wrong arity: {name!r} takes {expected} argument(s), got {nargs}", node.tok)

    def _declare(self, name_tok: int, sort_tok: int) -> None:
        name, sort = self.toks[name_tok], self.toks[sort_tok]
        m = _VAR.match(name)
        if m is None:
            raise _Located(f"variable name {name!r} is neither X_i (input) nor Y_i (output)", name_tok)
        if sort != "Real":
            raise _Located(f"declare-const {name} {sort}: only sort Real is supported", sort_tok)
        key = (m.group(1), int(m.group(2)))
        if name in self.vars:
            raise _Located(f"{name} is declared twice", name_tok)
        self.vars[name] = key
        self.decl_tok[key] = name_tok

    def _add_assert(self, dnf: list[tuple]) -> None:
        if len(dnf) == 1:
            self.common.extend(dnf[0])
        elif not dnf:
            self.is_false = True
        else:
            for conj in dnf:
                _own_box_check([a for a in conj if type(a) is _Bound], self.var_name)
            self.factors.append(dnf)

    # ---- formulas -------------------------------------------------------------------
    def _dnf(self, node, depth: int) -> list[tuple]:
        """Disjunctive normal form: a list of conjuncts, each a tuple of atoms."""
        if isinstance(node, int):
            text = self.toks[node]
            if text in ("true", "false"):
                return [()] if text == "true" else []
            raise _Located(f"expected a formula, got {text!r}", node)
        if depth > MAX_DEPTH:
            raise _Located(f"formula nested deeper than {MAX_DEPTH} levels", node.tok)
        op = self._head(node)
        if op in self.cmp_ops:
            atoms = self._comparison(node, op, depth)
            return [] if atoms is None else [atoms]
        if op == "and":
            return self._conjunction(node, depth)
        if op == "or":
            result = []
            for child in node.items[1:]:
                result.extend(self._dnf(child, depth + 1))
                if len(result) > self.max_conjuncts:
                    raise _Located(self._too_many(len(result)), node.tok)
            return result
        if op == "not":
            raise _Located("unsupported operator 'not' (VNN-LIB has no negation)", node.items[0])
        raise _Located(f"unknown operator {op!r} in a formula", node.items[0])

    def _conjunction(self, node: _List, depth: int) -> list[tuple]:
        """DNF of an ``and``: single-conjunct children are joined once, the rest multiplied out."""
        fixed: list = []
        multi: list[list[tuple]] = []
        false = False
        for child in node.items[1:]:
            part = self._dnf(child, depth + 1)
            if len(part) == 1:
                fixed.extend(part[0])
            elif part:
                multi.append(part)
            else:
                false = True
        if false:
            return []
        result = [tuple(fixed)]
        for part in multi:
            if len(result) * len(part) > self.max_conjuncts:
                raise _Located(self._too_many(len(result) * len(part)), node.tok)
            result = [a + b for a in result for b in part]
        return result

    def locate(self, text: str, tok: int) -> tuple[int, int]:
        """1-based line and column of token ``tok`` in ``text``."""
        return _locate(text, tok)

    def sizes(self, n_inputs: int | None, n_outputs: int | None) -> tuple[int, int]:
        """How many inputs and outputs are declared; checked against the model's counts if given."""
        n_in, n_out = _declared_count(self, "X"), _declared_count(self, "Y")
        _check_model_count(n_in, n_inputs, "X")
        _check_model_count(n_out, n_outputs, "Y")
        return n_in, n_out

    def spec_fields(self) -> dict:
        """Extra fields of the ``Spec`` (a 2.0 spec's declarations)."""
        return {}

    def var_name(self, kind: str, i: int) -> str:
        """How the message of an error names variable ``i`` of ``kind`` ("X" input, "Y" output)."""
        return _flat_name(kind, i)

    def _names(self, keys) -> str:
        return ", ".join(self.var_name(kind, i) for kind, i in sorted(keys))

    def _too_many(self, count: int) -> str:
        return f"formula has {count} disjuncts in normal form, more than the limit {self.max_conjuncts}"

    def _head(self, node: _List) -> str:
        if not node.items:
            raise _Located("empty list '()'", node.tok)
        if not isinstance(node.items[0], int):
            raise _Located("expected an operator after '('", node.tok)
        return self.toks[node.items[0]]

    def _comparison(self, node: _List, op: str, depth: int) -> tuple | None:
        """Atoms of a (chained) comparison; None if it is false."""
        args = node.items[1:]
        if len(args) < 2:
            raise _Located(f"wrong arity: {op!r} takes 2 arguments, got {len(args)}", node.tok)
        if len(args) == 2 and isinstance(args[0], int) and isinstance(args[1], int):
            bound = self._input_bound(op, args[0], node.tok)  # the leaves are adjacent tokens
            if bound is not None:
                return bound
        terms = [self._term(a, depth + 1) for a in args]
        atoms: tuple = ()
        false = False
        for lhs, rhs in itertools.pairwise(terms):
            got = self._atom(op, lhs, rhs, node.tok)
            false = false or got is None
            atoms += () if got is None else got
        return None if false else atoms

    def _atom(self, op: str, lhs: _Term, rhs: _Term, tok: int) -> tuple | None:
        """``lhs op rhs`` as bounds/rows; ``()`` if always true, None if always false."""
        if op in (">=", ">"):
            lhs, rhs = rhs, lhs
        strict = op in ("<", ">")
        coefs, c = _combine(lhs, rhs, -1.0)  # sum a_k v_k + c  (op)  0
        coefs = {k: a for k, a in coefs.items() if a != 0.0}
        if not coefs:
            holds = c == 0.0 if op in _EQ else (c < 0.0 if strict else c <= 0.0)
            return () if holds else None
        kinds = {kind for kind, _ in coefs}
        if kinds == {"X"}:
            if len(coefs) > 1:
                raise _Located(
                    f"unsupported: atom relates several input variables ({self._names(coefs)}); "
                    "only bounds like (<= X_i c) are supported on inputs",
                    tok,
                )
            (((_, i), a),) = coefs.items()
            value = (0.0 - c) / a + 0.0  # + 0.0 turns -0.0 into 0.0
            self.strict_inputs = self.strict_inputs or strict
            if op in _EQ:
                return _Bound(i, True, value, tok), _Bound(i, False, value, tok)
            return (_Bound(i, a > 0, value, tok),)
        if "X" in kinds:
            raise _Located(f"unsupported: atom mixes input and output variables ({self._names(coefs)})", tok)
        row = tuple(sorted((j, a) for (_, j), a in coefs.items()))
        b = 0.0 - c
        if op in _EQ:
            return _Row(row, b, False), _Row(tuple((j, -a) for j, a in row), -b, False)
        return (_Row(row, b, strict),)

    # ---- terms ----------------------------------------------------------------------
    def _leaf(self, tok: int) -> _Term:
        text = self.toks[tok]
        key = self.vars.get(text)
        if key is not None:
            return {key: 1.0}, 0.0
        if _NUMBER.match(text):
            value = float(text)
            if not math.isfinite(value):
                raise _Located(f"number {text} is out of the float64 range", tok)
            return {}, value
        if _VAR.match(text):
            raise _Located(f"undeclared variable {text}", tok)
        if text[0] in "0123456789.+-" and text not in ("+", "-"):
            raise _Located(f"bad number {text!r}", tok)
        if text in _PARENS:
            raise _Located(f"expected a term, got {text!r}", tok)
        raise _Located(f"unknown symbol {text!r} (not a declared variable or a number)", tok)

    def _term(self, node, depth: int) -> _Term:
        if isinstance(node, int):
            return self._leaf(node)
        if depth > MAX_DEPTH:
            raise _Located(f"term nested deeper than {MAX_DEPTH} levels", node.tok)
        op = self._head(node)
        if op not in ("+", "-", "*", "/"):
            what = "a comparison or connective" if op in self.cmp_ops or op in ("and", "or") else "an unknown operator"
            raise _Located(f"expected a term, got {what} {op!r}", node.items[0])
        args = [self._term(a, depth + 1) for a in node.items[1:]]
        if not args or (op in ("*", "/") and len(args) < 2):
            raise _Located(f"wrong arity: {op!r} got {len(args)} argument(s)", node.tok)
        if op == "-" and len(args) == 1:
            return _scaled(args[0], -1.0)
        if op in ("+", "-"):
            total = args[0]
            for arg in args[1:]:
                total = _combine(total, arg, 1.0 if op == "+" else -1.0)
            return total
        if op == "/":
            if len(args) != 2 or args[1][0]:
                raise _Located("unsupported: '/' must divide a term by one constant", node.tok)
            if args[1][1] == 0.0:
                raise _Located("division by zero", node.tok)
            return _scaled(args[0], 1.0 / args[1][1])
        return self._product(args, node.tok)

    def _product(self, args: list[_Term], tok: int) -> _Term:
        varying = [a for a in args if a[0]]
        if len(varying) > 1:
            raise _Located("unsupported: product of variables (only linear terms are allowed)", tok)
        scale = math.prod(a[1] for a in args if not a[0])
        return _scaled(varying[0], scale) if varying else ({}, scale)


def _tighten(lower: np.ndarray, upper: np.ndarray, bounds: list[_Bound]) -> tuple[np.ndarray, np.ndarray]:
    """Copies of the box ``lower <= x <= upper`` cut down by ``bounds``."""
    lower, upper = lower.copy(), upper.copy()  # (n,), (n,)
    if len(bounds) > 64:
        idx = np.fromiter((a.index for a in bounds), dtype=np.int64, count=len(bounds))
        val = np.fromiter((a.value for a in bounds), dtype=np.float64, count=len(bounds))
        up = np.fromiter((a.upper for a in bounds), dtype=bool, count=len(bounds))
        np.minimum.at(upper, idx[up], val[up])
        np.maximum.at(lower, idx[~up], val[~up])
        return lower, upper
    for a in bounds:  # a few bounds (a spec of many small boxes): cheaper than numpy's calls
        if a.upper:
            upper[a.index] = min(upper[a.index], a.value)
        else:
            lower[a.index] = max(lower[a.index], a.value)
    return lower, upper


def _nonempty_box(bounds: list[_Bound], size: int, name=_flat_name) -> tuple[np.ndarray, np.ndarray]:
    """The box of ``bounds`` over ``size`` inputs; raise, at the last bound involved, if it is empty."""
    lower, upper = _tighten(np.full(size, -np.inf), np.full(size, np.inf), bounds)
    crossed = np.nonzero(lower > upper)[0]
    if crossed.size:
        i = int(crossed[0])
        raise _Located(
            f"empty input box: {name('X', i)} has lower bound {float(lower[i])!r} > upper bound {float(upper[i])!r}",
            max(a.tok for a in bounds if a.index == i),
        )
    return lower, upper


def _own_box_check(bounds: list[_Bound], name=_flat_name) -> None:
    """Raise if these bounds (from one assert) cross on some input."""
    if bounds and _box_changes(bounds, None, None) is None:
        _nonempty_box(bounds, 1 + max(a.index for a in bounds), name)


def _box_changes(bounds: list[_Bound], lower: np.ndarray | None, upper: np.ndarray | None
                 ) -> tuple[tuple[int, float, float], ...] | None:
    """The entries ``(i, lo_i, hi_i)`` of the box ``lower <= x <= upper`` (``None``: unbounded) cut by
    ``bounds`` that differ from it, by index; None if the cut box is empty."""
    cut: dict[int, list[float]] = {}
    for a in bounds:
        lh = cut.get(a.index)
        if lh is None:
            lh = cut[a.index] = ([-math.inf, math.inf] if lower is None else
                                 [float(lower[a.index]), float(upper[a.index])])
        if a.upper:
            lh[1] = min(lh[1], a.value)
        else:
            lh[0] = max(lh[0], a.value)
    if any(lo > hi for lo, hi in cut.values()):
        return None
    if lower is None:
        return ()
    return tuple((i, lo, hi) for i, (lo, hi) in sorted(cut.items()) if lo != lower[i] or hi != upper[i])


def _declared_count(reader: _Reader, kind: str) -> int:
    """How many ``kind`` variables are declared; raise unless they are numbered 0..n-1."""
    indices = sorted(i for k, i in reader.decl_tok if k == kind)
    what = "input" if kind == "X" else "output"
    if not indices:
        raise SpecError(f"declares no {what} variables ({kind}_0, {kind}_1, ...)")
    if indices[-1] != len(indices) - 1:
        missing = next(i for i, j in enumerate(indices) if i != j)
        after = next(j for j in indices if j > missing)
        raise _Located(
            f"{kind}_{after} is declared but {kind}_{missing} is not "
            f"({what} variables must be numbered from {kind}_0 without gaps)",
            reader.decl_tok[(kind, after)],
        )
    return len(indices)


def _check_model_count(declared: int, model: int | None, kind: str) -> None:
    if model is not None and model != declared:
        what = "inputs" if kind == "X" else "outputs"
        raise SpecError(f"spec declares {declared} {what} ({kind}_0..{kind}_{declared - 1}) but the model has {model}")


def _polytope(rows: list[_Row], n_out: int) -> Polytope:
    A = np.zeros((len(rows), n_out))  # (k, n_out)
    for r, row in enumerate(rows):
        for j, a in row.coefs:
            A[r, j] = a
    b = np.array([row.b for row in rows], dtype=np.float64)  # (k,)
    strict = np.array([row.strict for row in rows], dtype=bool)  # (k,)
    return Polytope(A, b, strict)


def _bounded(lower: np.ndarray, upper: np.ndarray, name=_flat_name) -> None:
    for which, side in (("lower", lower), ("upper", upper)):
        bad = np.nonzero(~np.isfinite(side))[0]
        if bad.size:
            i = int(bad[0])
            raise SpecError(f"input variable {name('X', int(i))} has no {which} bound (every input needs both)")


def _assemble(reader: _Reader, n_inputs: int | None, n_outputs: int | None) -> Spec:
    """The ``Spec`` from the collected declarations and normal form."""
    n_in, n_out = reader.sizes(n_inputs, n_outputs)
    if reader.is_false:
        logger.warning("an assert is always false: the unsafe region is empty (no cases)")
        return Spec((), n_in, n_out, **reader.spec_fields())
    total = math.prod(len(f) for f in reader.factors)
    if total > reader.max_conjuncts:
        raise SpecError(f"the asserts multiply out to {total} disjuncts, more than the limit {reader.max_conjuncts}")
    if reader.strict_inputs:
        logger.warning("strict input bounds are read as their closure (non-strict)")
    bounds = [a for a in reader.common if type(a) is _Bound]
    rows = [a for a in reader.common if type(a) is _Row]
    lower, upper = _nonempty_box(bounds, n_in, reader.var_name)
    groups: dict[tuple, tuple[np.ndarray, np.ndarray, list[Polytope]]] = {}
    for combo in itertools.product(*reader.factors):
        atoms = combo[0] if len(combo) == 1 else [a for conj in combo for a in conj]
        key = _box_changes([a for a in atoms if type(a) is _Bound], lower, upper)
        if key is None:
            logger.debug("dropping a disjunct whose input box is empty")
            continue
        if key not in groups:
            lo, hi = lower.copy(), upper.copy()
            for i, lo_i, hi_i in key:
                lo[i], hi[i] = lo_i, hi_i
            _bounded(lo, hi, reader.var_name)
            groups[key] = (lo, hi, [])
        groups[key][2].append(_polytope(rows + [a for a in atoms if type(a) is _Row], n_out))
    if not groups:
        logger.warning("every disjunct has an empty input box: the unsafe region is empty")
    cases = tuple(Case(lo, hi, tuple(polys)) for lo, hi, polys in groups.values())
    return Spec(cases, n_in, n_out, **reader.spec_fields())


def parse_spec(
    text: str,
    n_inputs: int | None = None,
    n_outputs: int | None = None,
    source: str = "<string>",
    max_conjuncts: int = MAX_CONJUNCTS,
) -> Spec:
    """Parse VNN-LIB text; ``n_inputs``/``n_outputs`` (from the model) are checked if given.

    Text that starts with ``(vnnlib-version <2.x>)`` is read as VNN-LIB 2.0 (``vnnlib.reader2``),
    anything else as 1.0.
    """
    toks = _tokenize(text)
    if not toks:
        raise SpecError(f"{source}: empty spec (no declare-const or assert)")
    if toks[:2] == ["(", "vnnlib-version"]:
        from vnnlib.reader2 import Reader2

        reader: _Reader = Reader2(text, max_conjuncts)
    else:
        reader = _Reader(toks, max_conjuncts)
    try:
        reader.run()
        spec = _assemble(reader, n_inputs, n_outputs)
    except _Located as err:
        line, col = reader.locate(text, err.tok)
        raise SpecError(f"{source}:{line}:{col}: {err}") from None
    except SpecError as err:
        raise SpecError(f"{source}: {err}") from None
    logger.debug("%s: %d cases, %d inputs, %d outputs", source, len(spec.cases), spec.n_inputs, spec.n_outputs)
    return spec


def read_spec(path: str | os.PathLike, n_inputs: int | None = None, n_outputs: int | None = None) -> Spec:
    """Read a ``.vnnlib`` file (gzip-compressed files are recognised by content)."""
    try:
        data = Path(path).read_bytes()
        if data[:2] == b"\x1f\x8b":
            data = gzip.decompress(data)
        text = data.decode("utf-8-sig")  # a byte-order mark is dropped
    except (OSError, EOFError, zlib.error) as err:
        reason = getattr(err, "strerror", None) or str(err)
        raise SpecError(f"cannot read spec file {os.fspath(path)}: {reason}") from None
    except UnicodeDecodeError:
        raise SpecError(f"cannot read spec file {os.fspath(path)}: not UTF-8 text") from None
    return parse_spec(text, n_inputs, n_outputs, source=os.fspath(path))
