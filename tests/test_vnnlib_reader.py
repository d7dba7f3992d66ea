"""VNN-LIB reader: every construct against hand-written arrays, every malformed input."""

from __future__ import annotations

import gzip
import logging
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vnnlib import SpecError, parse_spec, read_spec
from vnnlib.reader import MAX_DEPTH

MODELS = Path(__file__).resolve().parents[1] / "models"


def decls(n_in: int = 2, n_out: int = 3) -> str:
    xs = "".join(f"(declare-const X_{i} Real)\n" for i in range(n_in))
    ys = "".join(f"(declare-const Y_{j} Real)\n" for j in range(n_out))
    return xs + ys


BOX = "(assert (>= X_0 -1))\n(assert (<= X_0 1))\n(assert (>= X_1 0))\n(assert (<= X_1 2))\n"


def parse(body: str, n_in: int = 2, n_out: int = 3, **kw):
    """Parse declarations + the [-1,1]x[0,2] box + ``body``."""
    return parse_spec(decls(n_in, n_out) + BOX + body, **kw)


def only_poly(spec):
    assert len(spec.cases) == 1 and len(spec.cases[0].polytopes) == 1
    return spec.cases[0].polytopes[0]


def error(text: str, **kw) -> str:
    with pytest.raises(SpecError) as info:
        parse_spec(text, **kw)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


def assert_at(msg: str, line: int, col: int, what: str) -> None:
    assert msg.startswith(f"<string>:{line}:{col}: "), msg
    assert what in msg, msg


# ---- meaning of the constructs --------------------------------------------------------


def test_box_and_single_row():
    spec = parse("(assert (<= Y_0 0.5))")
    assert spec.n_inputs == 2 and spec.n_outputs == 3
    case = spec.cases[0]
    np.testing.assert_array_equal(case.lower, [-1.0, 0.0])
    np.testing.assert_array_equal(case.upper, [1.0, 2.0])
    poly = only_poly(spec)
    np.testing.assert_array_equal(poly.A, [[1.0, 0.0, 0.0]])
    np.testing.assert_array_equal(poly.b, [0.5])
    np.testing.assert_array_equal(poly.strict, [False])


@pytest.mark.parametrize(
    ("atom", "row", "b"),
    [
        ("(<= Y_0 Y_1)", [1, -1, 0], 0.0),
        ("(>= Y_0 Y_1)", [-1, 1, 0], 0.0),
        ("(<= Y_2 -3)", [0, 0, 1], -3.0),
        ("(>= Y_2 -3)", [0, 0, -1], 3.0),
        ("(<= 0.5 Y_2)", [0, 0, -1], -0.5),
        ("(>= 0.5 Y_1)", [0, 1, 0], 0.5),
        ("(<= (+ Y_0 (* 2 Y_1)) 3)", [1, 2, 0], 3.0),
        ("(<= (- Y_0 Y_1) 1)", [1, -1, 0], 1.0),
        ("(<= (- Y_0) 1)", [-1, 0, 0], 1.0),
        ("(<= (* Y_0 -4) 1)", [-4, 0, 0], 1.0),
        ("(<= (/ Y_0 4) 1)", [0.25, 0, 0], 1.0),
        ("(<= (+ Y_0 1 Y_0) (- Y_2 2))", [2, 0, -1], -3.0),
        ("(<= (- Y_0 1 1) 0)", [1, 0, 0], 2.0),
        ("(<= (* 2 3 Y_1) 6)", [0, 6, 0], 6.0),
    ],
)
def test_output_atom_rows(atom, row, b):
    poly = only_poly(parse(f"(assert {atom})"))
    np.testing.assert_array_equal(poly.A, [row])
    np.testing.assert_array_equal(poly.b, [b])


@pytest.mark.parametrize(
    ("atoms", "lower", "upper"),
    [
        ("(>= X_0 -0.25) (<= X_0 0.5)", -0.25, 0.5),
        ("(<= -0.25 X_0) (>= 0.5 X_0)", -0.25, 0.5),
        ("(<= X_0 5.81e-05) (>= X_0 -1.5E-1)", -0.15, 5.81e-05),
        ("(= X_0 0.125)", 0.125, 0.125),
        ("(<= -0.5 X_0 0.75)", -0.5, 0.75),  # chained comparison
        ("(<= (* 2 X_0) 1) (>= (* -4 X_0) -1)", -1.0, 0.25),
        ("(<= (+ X_0 0.5) 1) (>= (- X_0) -0.25)", -1.0, 0.25),
        ("(<= X_0 .5) (>= X_0 -.5)", -0.5, 0.5),
        ("(<= X_0 3) (>= X_0 -2)", -1.0, 1.0),  # looser than the box: the box wins
    ],
)
def test_input_bounds(atoms, lower, upper):
    body = "".join(f"(assert {a})\n" for a in re.findall(r"\((?:[^()]|\([^()]*\))*\)", atoms))
    case = parse(body + "(assert (<= Y_0 0))").cases[0]
    assert case.lower[0] == lower and case.upper[0] == upper


def test_fast_and_general_paths_agree():
    fast = parse("(assert (<= X_0 0.3))\n(assert (>= X_1 0.7))\n(assert (<= Y_0 Y_1))")
    slow = parse("(assert (and (<= X_0 0.3) (>= X_1 0.7) (<= Y_0 Y_1)))")
    assert_specs_equal(fast, slow)


@given(st.floats(-1.0, 1.0), st.sampled_from(["<=", ">=", "=", "<", ">"]), st.booleans())
@settings(max_examples=60, deadline=None)
def test_fast_path_matches_general_path_on_random_bounds(value, op, number_first):
    atom = f"({op} {value!r} X_0)" if number_first else f"({op} X_0 {value!r})"
    text = decls() + "(assert (>= X_0 -1))(assert (<= X_0 1))(assert (>= X_1 0))(assert (<= X_1 1))"
    fast = parse_spec(text + f"(assert {atom})")
    assert_specs_equal(fast, parse_spec(text + f"(assert (and {atom}))"))


def test_same_meaning_in_every_layout():
    n = 40
    atoms = [f"(<= X_{i} {i + 0.5})" for i in range(n)] + [f"(>= X_{i} {i * 0.25})" for i in range(n)]
    outs = " ".join(f"(and (>= Y_{j} Y_0))" for j in range(1, 3))
    head = decls(n, 3)
    layouts = [
        head + "".join(f"(assert {a})" for a in atoms) + f"(assert (or {outs}))",
        head + f"(assert (and {' '.join(atoms)}))" + f"(assert (or {outs}))",
        head + f"(assert (or (and {' '.join(atoms)} (or {outs}))))",
        head + "(assert (or " + " ".join(f"(and {' '.join(atoms)} (>= Y_{j} Y_0))" for j in (1, 2)) + "))",
    ]
    first = parse_spec(layouts[0])
    assert len(first.cases) == 1 and len(first.cases[0].polytopes) == 2
    for text in layouts[1:]:
        assert_specs_equal(parse_spec(text), first)


def test_comments_everywhere():
    text = (
        "; header (with parens) ((\n"
        "(declare-const X_0 Real) ; trailing\n"
        "(declare-const Y_0 Real)\n"
        "(assert ; inside\n"
        "  (and (>= X_0 0) ; a ) paren in a comment\n"
        "       (<= X_0 1)))\n"
        "(assert (<= Y_0 2)) ; last line without newline"
    )
    spec = parse_spec(text)
    assert spec.cases[0].upper[0] == 1.0 and spec.cases[0].polytopes[0].b[0] == 2.0


def test_strict_output_rows_are_flagged():
    poly = only_poly(parse("(assert (< Y_0 1))\n(assert (> Y_0 Y_1))\n(assert (<= Y_2 0))"))
    np.testing.assert_array_equal(poly.A, [[1, 0, 0], [-1, 1, 0], [0, 0, 1]])
    np.testing.assert_array_equal(poly.b, [1, 0, 0])
    np.testing.assert_array_equal(poly.strict, [True, True, False])
    assert poly.contains([0.5, 0.0, 0.0]) and not poly.contains([1.0, 0.0, 0.0])


def test_strict_input_bounds_are_closed_with_a_warning(caplog):
    text = decls() + "(assert (> X_0 -1))(assert (< X_0 1))(assert (>= X_1 0))(assert (<= X_1 2))"
    with caplog.at_level(logging.WARNING, logger="vnnlib.reader"):
        case = parse_spec(text).cases[0]
    assert case.lower[0] == -1.0 and case.upper[0] == 1.0
    assert "closure" in caplog.text


def test_equality_on_outputs_is_two_rows():
    poly = only_poly(parse("(assert (= Y_1 2))"))
    np.testing.assert_array_equal(poly.A, [[0, 1, 0], [0, -1, 0]])
    np.testing.assert_array_equal(poly.b, [2, -2])
    np.testing.assert_array_equal(poly.strict, [False, False])


def test_constant_atoms():
    spec = parse("(assert (<= 1 2))\n(assert (or (and (<= 2 1) (<= Y_0 0)) (and (< 1 1.5) (<= Y_1 0))))")
    poly = only_poly(spec)
    np.testing.assert_array_equal(poly.A, [[0, 1, 0]])
    assert parse("(assert (< 1 1))").cases == ()
    assert parse("(assert (= 1 1)) (assert (<= Y_0 0))").cases[0].polytopes[0].A.shape == (1, 3)
    assert parse("(assert (<= (- X_0 X_0) 1)) (assert true) (assert (<= Y_0 0))").cases


def test_false_assert_gives_empty_spec(caplog):
    with caplog.at_level(logging.WARNING, logger="vnnlib.reader"):
        spec = parse("(assert false)")
    assert spec.cases == () and spec.n_inputs == 2
    assert "empty" in caplog.text
    assert parse("(assert (or))").cases == ()


def test_no_output_atom_means_whole_box_is_unsafe():
    spec = parse("")
    poly = only_poly(spec)
    assert poly.A.shape == (0, 3) and poly.b.shape == (0,)
    assert spec.is_violated_by([0.0, 1.0], [1e9, -1e9, 0.0])
    assert not spec.is_violated_by([2.0, 1.0], [0.0, 0.0, 0.0])
    assert only_poly(parse("(assert (and))")).A.shape == (0, 3)


def test_nested_and_or_multiplies_out():
    spec = parse("(assert (and (or (<= Y_0 0) (<= Y_1 0)) (or (<= Y_2 0) (and (<= Y_0 1) (<= Y_1 1)))))")
    polys = spec.cases[0].polytopes
    assert len(spec.cases) == 1 and len(polys) == 4
    expect = [
        ([[1, 0, 0], [0, 0, 1]], [0, 0]),
        ([[1, 0, 0], [1, 0, 0], [0, 1, 0]], [0, 1, 1]),
        ([[0, 1, 0], [0, 0, 1]], [0, 0]),
        ([[0, 1, 0], [1, 0, 0], [0, 1, 0]], [0, 1, 1]),
    ]
    for poly, (A, b) in zip(polys, expect):
        np.testing.assert_array_equal(poly.A, A)
        np.testing.assert_array_equal(poly.b, b)


def test_disjuncts_mixing_inputs_and_outputs_become_cases():
    text = decls(1, 2) + (
        "(assert (or (and (>= X_0 0) (<= X_0 1) (<= Y_0 0))\n"
        "            (and (>= X_0 2) (<= X_0 3) (<= Y_1 0))\n"
        "            (and (>= X_0 0) (<= X_0 1) (<= Y_1 5))))"
    )
    spec = parse_spec(text)
    assert len(spec.cases) == 2
    first, second = spec.cases
    assert (first.lower[0], first.upper[0]) == (0.0, 1.0)
    assert (second.lower[0], second.upper[0]) == (2.0, 3.0)
    assert [p.b[0] for p in first.polytopes] == [0.0, 5.0]  # same box: grouped
    np.testing.assert_array_equal(second.polytopes[0].A, [[0, 1]])


def test_several_top_level_ors_and_empty_intersections():
    text = decls(1, 1) + (
        "(assert (or (and (>= X_0 0) (<= X_0 1)) (and (>= X_0 2) (<= X_0 3))))\n"
        "(assert (or (and (>= X_0 0) (<= X_0 0.5)) (and (>= X_0 2.5) (<= X_0 3))))\n"
        "(assert (or (<= Y_0 0) (>= Y_0 10)))"
    )
    spec = parse_spec(text)
    boxes = [(c.lower[0], c.upper[0]) for c in spec.cases]
    assert boxes == [(0.0, 0.5), (2.5, 3.0)]  # [0,1]x[2.5,3] and [2,3]x[0,0.5] are empty: dropped
    assert all(len(c.polytopes) == 2 for c in spec.cases)


def test_acasxu_prop6_multiplies_out_to_two_cases_of_four():
    spec = read_spec(MODELS / "acasxu" / "prop_6.vnnlib")
    assert (spec.n_inputs, spec.n_outputs) == (5, 5)
    assert [len(c.polytopes) for c in spec.cases] == [4, 4]
    np.testing.assert_array_equal(spec.cases[0].lower, [-0.129289109, 0.11140846, -0.499999896, -0.5, -0.5])
    np.testing.assert_array_equal(spec.cases[0].upper, [0.700434925, 0.499999896, -0.499204121, 0.5, 0.5])
    np.testing.assert_array_equal(spec.cases[1].lower, [-0.129289109, -0.499999896, -0.499999896, -0.5, -0.5])
    np.testing.assert_array_equal(spec.cases[1].upper, [0.700434925, -0.11140846, -0.499204121, 0.5, 0.5])
    for case in spec.cases:
        for k, poly in enumerate(case.polytopes):
            row = np.zeros(5)
            row[k + 1], row[0] = 1.0, -1.0  # Y_{k+1} <= Y_0
            np.testing.assert_array_equal(poly.A, [row])
            np.testing.assert_array_equal(poly.b, [0.0])


def test_shipped_test_specs():
    prop = read_spec(MODELS / "test_prop.vnnlib")
    poly = only_poly(prop)
    np.testing.assert_array_equal(poly.A[:, 0], [1, 1, 1, 1])
    np.testing.assert_array_equal(poly.A[:, 1:], -np.eye(4))
    small = read_spec(MODELS / "test_small.vnnlib")
    np.testing.assert_array_equal(only_poly(small).A, [[-1.0]])
    np.testing.assert_array_equal(only_poly(small).b, [-100.0])


def test_ignored_commands():
    spec = parse_spec("(set-logic QF_LRA)" + decls(1, 1) + "(assert (<= -1 X_0 1))(check-sat)(get-model)(exit)")
    assert len(spec.cases) == 1


def test_model_counts_are_checked():
    assert parse("", n_inputs=2, n_outputs=3).n_inputs == 2
    msg = error(decls() + BOX, n_inputs=784)
    assert msg == "<string>: spec declares 2 inputs (X_0..X_1) but the model has 784"
    msg = error(decls() + BOX, n_inputs=2, n_outputs=10)
    assert "spec declares 3 outputs (Y_0..Y_2) but the model has 10" in msg


def test_conjunct_cap():
    ors = "".join("(assert (or (<= Y_0 0) (<= Y_1 0)))\n" for _ in range(20))
    with pytest.raises(SpecError, match="1048576 disjuncts, more than the limit 1000000"):
        parse(ors)
    assert len(parse(ors[: 36 * 3]).cases[0].polytopes) == 8
    with pytest.raises(SpecError, match="limit 7"):
        parse(ors[: 36 * 3], max_conjuncts=7)
    nested = "(assert (and" + " (or (<= Y_0 0) (<= Y_1 0))" * 20 + "))"
    assert_at(error(decls() + nested), 6, 9, "more than the limit")


def test_many_single_atom_asserts_stay_one_conjunct():
    n = 3000
    text = decls(n, 2) + "".join(f"(assert (>= X_{i} {i}))\n(assert (<= X_{i} {i + 1}))\n" for i in range(n))
    spec = parse_spec(text + "(assert (or (<= Y_0 Y_1) (<= Y_1 Y_0)))")
    assert len(spec.cases) == 1 and len(spec.cases[0].polytopes) == 2
    np.testing.assert_array_equal(spec.cases[0].lower, np.arange(n))


# ---- malformed input: message and line:column -----------------------------------------

ERRORS = [
    # (text after the two-line header, line, col, what)
    ("(assert (<= X_0 1)", 3, 1, "unbalanced parentheses: this '(' is never closed"),
    ("(assert (<= X_0 1)))", 3, 20, "unbalanced parentheses: unexpected ')'"),
    ("X_0", 3, 1, "expected '(' to start a command, got 'X_0'"),
    ("(assert (foo X_0 1))", 3, 10, "unknown operator 'foo'"),
    ("(assert (not (<= X_0 1)))", 3, 10, "unsupported operator 'not'"),
    ("(define-fun f () Real 1)", 3, 2, "unknown command 'define-fun'"),
    ("(assert (<= X_5 1))", 3, 13, "undeclared variable X_5"),
    ("(assert (<= X_0 foo))", 3, 17, "unknown symbol 'foo'"),
    ("(assert (<= X_0 1.2.3))", 3, 17, "bad number '1.2.3'"),
    ("(assert (<= X_0 1e))", 3, 17, "bad number '1e'"),
    ("(assert (<= X_0 --1))", 3, 17, "bad number '--1'"),
    ("(assert (<= X_0 nan))", 3, 17, "unknown symbol 'nan'"),
    ("(assert (<= X_0 \u0661))", 3, 17, "unknown symbol"),  # a non-ASCII digit is no number
    ("(assert (<= X_0 1e999))", 3, 17, "out of the float64 range"),
    ("(assert (<= X_0))", 3, 9, "wrong arity: '<=' takes 2 arguments, got 1"),
    ("(assert)", 3, 1, "wrong arity: 'assert' takes 1 argument(s), got 0"),
    ("(assert (<= X_0 1) (<= X_0 2))", 3, 1, "wrong arity: 'assert' takes 1 argument(s), got 2"),
    ("(declare-const X_1)", 3, 1, "wrong arity: 'declare-const'"),
    ("(declare-const X_1 Int)", 3, 20, "declare-const X_1 Int: only sort Real is supported"),
    ("(declare-const Z_0 Real)", 3, 16, "variable name 'Z_0' is neither X_i (input) nor Y_i (output)"),
    ("(declare-const X_01 Real)", 3, 16, "variable name 'X_01'"),
    ("(declare-const x_1 Real)", 3, 16, "variable name 'x_1'"),
    ("(declare-const X_0 Real)", 3, 16, "X_0 is declared twice"),
    ("(declare-const X_2 Real)", 3, 16, "X_2 is declared but X_1 is not"),
    ("(assert (<= X_0 Y_0))", 3, 9, "unsupported: atom mixes input and output variables (X_0, Y_0)"),
    ("(assert (<= (+ X_0 Y_0) 1))", 3, 9, "unsupported: atom mixes input and output"),
    ("(declare-const X_1 Real)(assert (<= X_0 X_1))", 3, 33, "several input variables (X_0, X_1)"),
    ("(assert (<= (* Y_0 Y_0) 1))", 3, 13, "unsupported: product of variables"),
    ("(assert (<= (/ Y_0 Y_0) 1))", 3, 13, "'/' must divide a term by one constant"),
    ("(assert (<= (/ Y_0 0) 1))", 3, 13, "division by zero"),
    ("(assert (<= (max Y_0 1) 1))", 3, 14, "expected a term, got an unknown operator 'max'"),
    ("(assert (<= (and Y_0) 1))", 3, 14, "expected a term, got a comparison or connective 'and'"),
    ("(assert X_0)", 3, 9, "expected a formula, got 'X_0'"),
    ("(assert ())", 3, 9, "empty list '()'"),
    ("(assert ((<= X_0 1)))", 3, 9, "expected an operator after '('"),
    ("(())", 3, 1, "expected a command name"),
    ("(assert (<= (+) 1))", 3, 13, "wrong arity: '+' got 0 argument(s)"),
    ("(assert (<= Y_0 ( 1))", 3, 1, "unbalanced"),
    ("\n\n  (assert (or (and (>= X_0 1) (<= X_0 0))\n  (<= Y_0 0)))", 5, 31, "empty input box"),
]


@pytest.mark.parametrize(("body", "line", "col", "what"), ERRORS)
def test_malformed(body, line, col, what):
    assert_at(error("(declare-const X_0 Real)\n(declare-const Y_0 Real)\n" + body), line, col, what)


def test_crossed_box_from_two_asserts_points_at_the_later_one():
    text = decls(1, 1) + "(assert (>= X_0 2))\n(assert (<= X_0 5))\n  (assert (<= X_0 1))"
    assert_at(error(text), 5, 11, "empty input box: X_0 has lower bound 2.0 > upper bound 1.0")


def test_unbounded_inputs():
    msg = error(decls(2, 1) + "(assert (>= X_0 0))(assert (<= X_0 1))(assert (<= X_1 1))")
    assert msg == "<string>: input variable X_1 has no lower bound (every input needs both)"
    assert "X_0 has no upper bound" in error(decls(1, 1) + "(assert (>= X_0 0))")
    assert "X_0 has no lower bound" in error(decls(1, 1) + "(assert (<= Y_0 0))")
    two = "(assert (or (and (>= X_0 0) (<= X_0 1)) (>= X_0 2)))"
    assert "X_0 has no upper bound" in error(decls(1, 1) + two)


def test_missing_declarations_and_empty_files():
    assert error("") == "<string>: empty spec (no declare-const or assert)"
    assert error("; only a comment\n\n") == "<string>: empty spec (no declare-const or assert)"
    assert "declares no output variables" in error("(declare-const X_0 Real)(assert (<= -1 X_0 1))")
    assert "declares no input variables" in error("(declare-const Y_0 Real)(assert (<= Y_0 1))")
    assert "declares no input variables" in error("(declare-const Y_0 Real)")


def test_deep_nesting_is_an_error_not_a_crash():
    deep = "(and " * (MAX_DEPTH + 5) + "(<= Y_0 1)" + ")" * (MAX_DEPTH + 5)
    assert "nested deeper than" in error(decls(1, 1) + f"(assert {deep})")
    term = "(- " * (MAX_DEPTH + 5) + "Y_0" + ")" * (MAX_DEPTH + 5)
    assert "nested deeper than" in error(decls(1, 1) + f"(assert (<= {term} 1))")


def test_source_name_in_messages():
    with pytest.raises(SpecError, match=r"^spec\.vnnlib:1:1: "):
        parse_spec(")", source="spec.vnnlib")


# ---- files -------------------------------------------------------------------------------


def test_read_spec_plain_and_gz(tmp_path):
    src = (MODELS / "acasxu" / "prop_6.vnnlib").read_text()
    plain = tmp_path / "p.vnnlib"
    plain.write_text(src)
    packed = tmp_path / "p.vnnlib.gz"
    with gzip.open(packed, "wt") as f:
        f.write(src)
    assert_specs_equal(read_spec(plain), read_spec(packed))
    assert_specs_equal(read_spec(str(packed), 5, 5), parse_spec(src))


def test_read_spec_skips_a_byte_order_mark(tmp_path):
    path = tmp_path / "bom.vnnlib"
    path.write_bytes(b"\xef\xbb\xbf" + (MODELS / "test_small.vnnlib").read_bytes())
    assert_specs_equal(read_spec(path), read_spec(MODELS / "test_small.vnnlib"))


def test_read_spec_errors_name_the_file(tmp_path):
    missing = tmp_path / "nope.vnnlib"
    with pytest.raises(SpecError, match=f"cannot read spec file {re.escape(str(missing))}: "):
        read_spec(missing)
    with pytest.raises(SpecError, match="cannot read spec file"):
        read_spec(tmp_path)
    binary = tmp_path / "bin.vnnlib"
    binary.write_bytes(b"\xff\xfe\x00(")
    with pytest.raises(SpecError, match="not UTF-8 text"):
        read_spec(binary)
    broken = tmp_path / "broken.vnnlib.gz"
    broken.write_bytes(gzip.compress(b"(declare-const X_0 Real)")[:-6])
    with pytest.raises(SpecError, match="cannot read spec file"):
        read_spec(broken)
    bad = tmp_path / "bad.vnnlib"
    bad.write_text("(declare-const X_0 Real)\n(assert (<= X_0 1)")
    with pytest.raises(SpecError, match=f"^{re.escape(str(bad))}:2:1: unbalanced"):
        read_spec(bad)


# ---- the normal form means what the formula means ------------------------------------------

GRID = [-1.0, -0.5, 0.0, 0.5, 1.0]


def _atoms():
    out_const = st.tuples(st.sampled_from(["<=", ">=", "<", ">", "="]), st.integers(0, 1), st.sampled_from(GRID)).map(
        lambda t: ("yc",) + t
    )
    out_pair = st.tuples(st.sampled_from(["<=", "<"]), st.permutations([0, 1])).map(
        lambda t: ("yy", t[0], t[1][0], t[1][1])
    )
    lower = st.tuples(st.integers(0, 1), st.sampled_from([-1.0, -0.5, 0.0])).map(lambda t: ("xl",) + t)
    upper = st.tuples(st.integers(0, 1), st.sampled_from([0.0, 0.5, 1.0])).map(lambda t: ("xu",) + t)
    const = st.sampled_from([("true",), ("false",)])
    return st.one_of(out_const, out_pair, lower, upper, const)


FORMULAS = st.recursive(
    _atoms(),
    lambda inner: st.tuples(st.sampled_from(["and", "or"]), st.lists(inner, min_size=1, max_size=3)),
    max_leaves=8,
)

_OPS = {
    "<=": lambda a, b: a <= b,
    ">=": lambda a, b: a >= b,
    "<": lambda a, b: a < b,
    ">": lambda a, b: a > b,
    "=": lambda a, b: a == b,
}


def _text(f) -> str:
    kind = f[0]
    if kind in ("and", "or"):
        return f"({kind} " + " ".join(_text(g) for g in f[1]) + ")"
    if kind == "yc":
        return f"({f[1]} Y_{f[2]} {f[3]})"
    if kind == "yy":
        return f"({f[1]} Y_{f[2]} Y_{f[3]})"
    if kind == "xl":
        return f"(>= X_{f[1]} {f[2]})"
    if kind == "xu":
        return f"(<= X_{f[1]} {f[2]})"
    return kind


def _holds(f, x, y) -> bool:
    kind = f[0]
    if kind == "and":
        return all(_holds(g, x, y) for g in f[1])
    if kind == "or":
        return any(_holds(g, x, y) for g in f[1])
    if kind == "yc":
        return _OPS[f[1]](y[f[2]], f[3])
    if kind == "yy":
        return _OPS[f[1]](y[f[2]], y[f[3]])
    if kind == "xl":
        return x[f[1]] >= f[2]
    if kind == "xu":
        return x[f[1]] <= f[2]
    return kind == "true"


@given(
    st.lists(FORMULAS, min_size=1, max_size=3),
    st.lists(st.tuples(st.sampled_from(GRID), st.sampled_from(GRID)), min_size=8, max_size=8),
    st.lists(st.tuples(st.sampled_from(GRID), st.sampled_from(GRID)), min_size=8, max_size=8),
)
@settings(max_examples=150, deadline=None)
def test_spec_holds_exactly_where_the_formula_holds(formulas, xs, ys):
    box = "(assert (>= X_0 -1))(assert (<= X_0 1))(assert (>= X_1 -1))(assert (<= X_1 1))\n"
    text = decls(2, 2) + box + "".join(f"(assert {_text(f)})\n" for f in formulas)
    spec = parse_spec(text)
    for x in xs:
        for y in ys:
            expected = all(_holds(f, x, y) for f in formulas)
            assert spec.is_violated_by(np.array(x), np.array(y)) == expected, (text, x, y)


def assert_specs_equal(a, b) -> None:
    assert (a.n_inputs, a.n_outputs, len(a.cases)) == (b.n_inputs, b.n_outputs, len(b.cases))
    for ca, cb in zip(a.cases, b.cases):
        np.testing.assert_array_equal(ca.lower, cb.lower)
        np.testing.assert_array_equal(ca.upper, cb.upper)
        assert len(ca.polytopes) == len(cb.polytopes)
        for pa, pb in zip(ca.polytopes, cb.polytopes):
            np.testing.assert_array_equal(pa.A, pb.A)
            np.testing.assert_array_equal(pa.b, pb.b)
            np.testing.assert_array_equal(pa.strict, pb.strict)


def test_vnnlib_needs_only_numpy():
    code = (
        "import sys, vnnlib; from vnnlib import parse_spec, read_spec, write_spec; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'verifier', 'onnx', 'scipy')); "
        "sys.exit(' '.join(bad) or None)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def _or_of_ands(rng: np.random.Generator, conjuncts: int) -> str:
    """A spec of many boxes as nn4sys writes them, with every atom shape the reader takes in one."""
    values = ["0.0", "-0.0", "0.25", "-0.5", "1e-3", "3"]

    def atom() -> str:
        op = str(rng.choice(["<=", ">=", "<", ">", "="]))
        kind = rng.integers(5)
        if kind == 0:
            a, b = f"X_{rng.integers(2)}", str(rng.choice(values))
        elif kind == 1:
            a, b = f"Y_{rng.integers(3)}", str(rng.choice(values))
        elif kind == 2:
            a, b = f"Y_{rng.integers(3)}", f"Y_{rng.integers(3)}"
        elif kind == 3:
            a, b = str(rng.choice(values)), str(rng.choice(values))  # always true or always false
        else:
            a, b = str(rng.choice(values)), f"{'XY'[rng.integers(2)]}_{rng.integers(2)}"
        return f"({op} {a} {b})"

    boxes = [f"(>= X_0 {lo}) (<= X_0 {lo + 0.5})" for lo in (-0.5, 0.0, 0.25)]
    body = " ".join(f"(and {boxes[rng.integers(3)]} {' '.join(atom() for _ in range(rng.integers(0, 4)))})"
                    for _ in range(conjuncts))
    return decls() + "(assert (>= X_1 -1)) (assert (<= X_1 1))" + f"(assert (or {body}))"


def test_or_of_ands_fast_path_matches_the_general_path(monkeypatch):
    from vnnlib.reader import _Reader

    def read(text: str):
        try:
            return parse_spec(text)
        except SpecError as err:  # e.g. a conjunct whose own input bounds cross
            return str(err)

    rng = np.random.default_rng(0)
    texts = [_or_of_ands(rng, int(rng.integers(2, 40))) for _ in range(200)]
    fast = [read(t) for t in texts]
    assert 50 < sum(not isinstance(a, str) for a in fast) < 200  # specs and errors both
    monkeypatch.setattr(_Reader, "_or_of_ands", lambda self, i: None)
    for t, a in zip(texts, fast):
        b = read(t)
        if isinstance(a, str) or isinstance(b, str):
            assert a == b
            continue
        assert_specs_equal(a, b)
        for ca, cb in zip(a.cases, b.cases):  # signed zeros too
            for pa, pb in zip(ca.polytopes, cb.polytopes):
                assert np.array_equal(np.signbit(pa.b), np.signbit(pb.b)) and np.array_equal(np.signbit(pa.A),
                                                                                               np.signbit(pb.A))
            assert np.array_equal(np.signbit(ca.lower), np.signbit(cb.lower))


@pytest.mark.parametrize("bad", ["(<= X_0 Z_1)", "(<= X_0 0.3) (>= X_0 0.6)", "(<= Y_0 1e999)", "(<= X_0 X_1)"])
def test_or_of_ands_errors_are_those_of_the_general_path(monkeypatch, bad):
    from vnnlib.reader import _Reader

    text = decls() + "(assert (>= X_1 -1)) (assert (<= X_1 1))" + \
        f"(assert (or (and (>= X_0 0) (<= X_0 1)) (and (>= X_0 0) (<= X_0 1) {bad})))"
    fast = error(text)
    monkeypatch.setattr(_Reader, "_or_of_ands", lambda self, i: None)
    assert error(text) == fast
