"""VNN-LIB 2.0 (one network): hand-written specs against exact arrays, equivalence with 1.0,
malformed and unsupported input with line:column, the writer, and ``verify`` end to end."""

from __future__ import annotations

import gzip
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings

from tests.test_vnnlib_writer import specs
from vnnlib import Polytope, Spec, SpecError, TensorDecl, parse_spec, read_spec, write_spec
from vnnlib.writer import write_assignment

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "models"

HEADER = """(vnnlib-version <2.0>)
(declare-network net
  (declare-input X float32 [1,2])
  (declare-output Y float32 [3]))
"""
BOX = "(assert (>= X[0,0] -1))\n(assert (<= X[0,0] 1))\n(assert (>= X[0,1] 0))\n(assert (<= X[0,1] 2))\n"


def parse(body: str, **kw) -> Spec:
    """The 1x2 input, 3 outputs, box [-1,1]x[0,2], then ``body``."""
    return parse_spec(HEADER + BOX + body, **kw)


def only_poly(spec: Spec) -> Polytope:
    assert len(spec.cases) == 1 and len(spec.cases[0].polytopes) == 1
    return spec.cases[0].polytopes[0]


def assert_poly(poly: Polytope, A, b, strict=None) -> None:
    np.testing.assert_array_equal(poly.A, np.array(A, dtype=np.float64).reshape(len(b), -1))
    np.testing.assert_array_equal(poly.b, np.array(b, dtype=np.float64))
    np.testing.assert_array_equal(poly.strict, np.zeros(len(b), bool) if strict is None else strict)


def assert_specs_equal(a: Spec, b: Spec) -> None:
    assert (a.n_inputs, a.n_outputs, len(a.cases)) == (b.n_inputs, b.n_outputs, len(b.cases))
    for ca, cb in zip(a.cases, b.cases, strict=True):
        np.testing.assert_array_equal(ca.lower, cb.lower)
        np.testing.assert_array_equal(ca.upper, cb.upper)
        assert len(ca.polytopes) == len(cb.polytopes)
        for pa, pb in zip(ca.polytopes, cb.polytopes, strict=True):
            np.testing.assert_array_equal(pa.A, pb.A)
            np.testing.assert_array_equal(pa.b, pb.b)
            np.testing.assert_array_equal(pa.strict, pb.strict)


def error(text: str, **kw) -> str:
    with pytest.raises(SpecError) as info:
        parse_spec(text, **kw)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


# ---- meaning of the constructs --------------------------------------------------------


def test_declarations_box_and_one_row():
    spec = parse("(assert (<= Y[1] 0.5))")
    assert (spec.version, spec.network) == ("2.0", "net")
    assert spec.input_decl == TensorDecl("X", "float32", (1, 2))
    assert spec.output_decl == TensorDecl("Y", "float32", (3,))
    assert (spec.n_inputs, spec.n_outputs) == (2, 3)
    case = spec.cases[0]
    np.testing.assert_array_equal(case.lower, [-1.0, 0.0])
    np.testing.assert_array_equal(case.upper, [1.0, 2.0])
    assert_poly(only_poly(spec), [[0, 1, 0]], [0.5])


def test_indices_flatten_row_major():
    text = """(vnnlib-version <2.0>)
(declare-network f (declare-input X Real [2,3]) (declare-output Y Real [2,2]))
""" + "".join(f"(assert (== X[{i // 3},{i % 3}] {i}))\n" for i in range(6)) + "(assert (<= Y[1,0] Y[0,1]))"
    spec = parse_spec(text)
    np.testing.assert_array_equal(spec.cases[0].lower, np.arange(6.0))
    np.testing.assert_array_equal(spec.cases[0].upper, np.arange(6.0))
    assert_poly(only_poly(spec), [[0, -1, 1, 0]], [0.0])
    assert spec.input_decl.element(5) == "X[1,2]" and spec.output_decl.element(2) == "Y[1,0]"


def test_scalar_variables_and_blanks_in_indices():
    text = """(vnnlib-version <2.0>)
(declare-network f
  (declare-input X Real [1, 2])   ; a blank after the comma
  (declare-output Y Real []))
(assert (>= X [0, 0] 0)) (assert (<= X[ 0 ,0 ] 1)) (assert (>= X[0,1] 0)) (assert (<= X[0,1] 1))
(assert (> Y 0.25))
"""
    spec = parse_spec(text, n_inputs=2, n_outputs=1)
    assert spec.output_decl.shape == () and spec.output_decl.element(0) == "Y"
    assert_poly(only_poly(spec), [[-1]], [-0.25], [True])


def test_linear_arithmetic_on_both_sides():
    spec = parse("(assert (<= (+ Y[0] 1.5 (- Y[2])) (- (* 2 Y[1]) 0.5 (* Y[2] -3))))")
    # y0 + 1.5 - y2 <= 2 y1 - 0.5 + 3 y2   <=>   y0 - 2 y1 - 4 y2 <= -2
    assert_poly(only_poly(spec), [[1, -2, -4]], [-2.0])


def test_scientific_numerals_and_input_scaling():
    spec = parse_spec(HEADER + """(assert (>= (* 2 X[0,0]) -2e0)) (assert (>= (- X[0,0]) -5.0E-1))
(assert (>= X[0,1] 1.25e-3)) (assert (<= (* 4 X[0,1]) 8)) (assert (<= Y[0] -3.5e-05))""")
    np.testing.assert_array_equal(spec.cases[0].lower, [-1.0, 1.25e-3])
    np.testing.assert_array_equal(spec.cases[0].upper, [0.5, 2.0])
    assert_poly(only_poly(spec), [[1, 0, 0]], [-3.5e-05])


def test_strict_rows_and_comparison_directions():
    spec = parse("(assert (and (< Y[0] 1) (> Y[1] 2) (>= Y[2] Y[0]) (<= 3 Y[1])))")
    assert_poly(only_poly(spec), [[1, 0, 0], [0, -1, 0], [1, 0, -1], [0, -1, 0]], [1, -2, 0, -3],
                [True, True, False, False])


def test_equality_on_outputs_is_two_rows_and_on_inputs_fixes():
    spec = parse_spec(HEADER + "(assert (== X[0,0] 0.5)) (assert (= X[0,1] -1)) (assert (== (+ Y[0] Y[1]) 2))")
    np.testing.assert_array_equal(spec.cases[0].lower, [0.5, -1.0])
    np.testing.assert_array_equal(spec.cases[0].upper, [0.5, -1.0])
    assert_poly(only_poly(spec), [[1, 1, 0], [-1, -1, 0]], [2.0, -2.0])


def test_not_equal_on_outputs_is_an_exact_disjunction():
    spec = parse("(assert (!= Y[0] Y[2]))")
    polys = spec.cases[0].polytopes
    assert len(spec.cases) == 1 and len(polys) == 2
    assert_poly(polys[0], [[1, 0, -1]], [0.0], [True])
    assert_poly(polys[1], [[-1, 0, 1]], [0.0], [True])
    assert spec.is_violated_by([0, 0], [1, 0, 0]) and not spec.is_violated_by([0, 0], [1, 0, 1])
    assert parse("(assert (!= 1 1))").cases == ()  # false: nothing is unsafe
    assert len(parse("(assert (!= 1 2))").cases[0].polytopes[0].b) == 0  # true: the whole box is unsafe


def test_nested_and_or_normal_form():
    spec = parse_spec(HEADER + """(assert (or
    (and (>= X[0,0] 0) (<= X[0,0] 1) (>= X[0,1] 0) (<= X[0,1] 1) (or (<= Y[0] 0) (<= Y[1] 0)))
    (and (>= X[0,0] 2) (<= X[0,0] 3) (>= X[0,1] 0) (<= X[0,1] 1) (<= Y[2] 0))))
(assert (<= Y[0] 10))""")
    assert len(spec.cases) == 2
    first, second = spec.cases
    np.testing.assert_array_equal(first.lower, [0, 0])
    np.testing.assert_array_equal(second.upper, [3, 1])
    assert len(first.polytopes) == 2 and len(second.polytopes) == 1
    assert_poly(first.polytopes[1], [[1, 0, 0], [0, 1, 0]], [10, 0])
    assert_poly(second.polytopes[0], [[1, 0, 0], [0, 0, 1]], [10, 0])


def test_other_minor_versions_and_onnx_names():
    spec = parse_spec(HEADER.replace("<2.0>", "<2.1>").replace("[3])", '[3] "logits")') + BOX + "(assert (<= Y[0] 0))")
    assert spec.version == "2.1" and spec.output_decl.dtype == "float32"


def test_model_sizes_are_checked_against_the_declared_shapes():
    assert parse("(assert (<= Y[0] 0))", n_inputs=2, n_outputs=3).n_inputs == 2
    msg = error(HEADER + BOX, n_inputs=3)
    assert msg == "<string>:3:18: spec declares input X float32 [1,2] (2 values) but the model has 3 inputs"
    assert "output Y float32 [3] (3 values) but the model has 10 outputs" in error(HEADER + BOX, n_outputs=10)


def test_spec_remembers_consistent_declarations():
    with pytest.raises(SpecError, match=r"X Real \[2,2\] has 4 entries, spec has 3 inputs"):
        Spec((), 3, 1, "2.0", "f", TensorDecl("X", "Real", (2, 2)), TensorDecl("Y", "Real", (1,)))
    with pytest.raises(SpecError, match="needs its input and output declarations"):
        Spec((), 3, 1, version="2.0")
    assert Spec((), 3, 1).version == "1.0" and Spec((), 3, 1).input_decl is None


# ---- the same property in 1.0 and 2.0 -------------------------------------------------


def to_v2(text: str, x_shape: tuple[int, ...], y_shape: tuple[int, ...]) -> str:
    """A 1.0 text rewritten by regular expressions: the declarations replaced, ``X_i``/``Y_j`` by the
    entries of ``X float32 x_shape``/``Y float32 y_shape`` (row-major)."""
    x, y = TensorDecl("X", "float32", x_shape), TensorDecl("Y", "float32", y_shape)
    body = re.sub(r"\(declare-const [XY]_\d+ Real\)", "", text)
    body = re.sub(r"\bX_(\d+)\b", lambda m: x.element(int(m.group(1))), body)
    body = re.sub(r"\bY_(\d+)\b", lambda m: y.element(int(m.group(1))), body)
    head = f"(vnnlib-version <2.0>)\n(declare-network model (declare-input {x.header()}) (declare-output {y.header()}))"
    return head + "\n" + body


V1_FILES = [p for p in sorted(MODELS.glob("*.vnnlib")) + sorted((MODELS / "acasxu").glob("*.vnnlib"))
            if "(vnnlib-version" not in p.read_text()]


@pytest.mark.parametrize("path", V1_FILES, ids=lambda p: p.name)
def test_same_arrays_as_the_1_0_file(path):
    v1 = read_spec(path)
    v2 = parse_spec(to_v2(path.read_text(), (1, v1.n_inputs), (v1.n_outputs,)), v1.n_inputs, v1.n_outputs)
    assert v2.version == "2.0" and v2.input_decl.shape == (1, v1.n_inputs)
    assert_specs_equal(v1, v2)


def test_writer_round_trips_between_versions():
    for path in V1_FILES:
        v1 = read_spec(path)
        text = write_spec(v1, version="2.0")
        assert text.count("(vnnlib-version <2.0>)") == 1 and "X_0" not in text
        assert re.search(r"[0-9][eE]", text) is None  # 2.0's numerals have no exponent
        v2 = parse_spec(text)
        assert_specs_equal(v1, v2)
        assert v2.input_decl == TensorDecl("X", "Real", (v1.n_inputs,))
        assert write_spec(v2) == text  # a 2.0 spec is written as 2.0 by default
        assert_specs_equal(v1, parse_spec(write_spec(v2, version="1.0")))


@settings(max_examples=60, deadline=None)
@given(specs())
def test_writer_2_0_round_trip_of_random_specs(spec):
    text = write_spec(spec, version="2.0")
    back = parse_spec(text, spec.n_inputs, spec.n_outputs)
    assert_specs_equal(parse_spec(write_spec(spec)), back)  # the 1.0 writer's normalisation, same arrays


def test_writer_keeps_declarations_and_exact_numbers():
    spec = parse("(assert (or (<= (+ (* 0.1 Y[0]) (* -3 Y[2])) 1e-300) (< Y[1] 123456789.125)))")
    text = write_spec(spec)
    assert "(declare-network net" in text and "(declare-input X float32 [1,2])" in text and "X[0,1]" in text
    back = parse_spec(text)
    assert_specs_equal(spec, back)
    assert (back.network, back.input_decl, back.output_decl) == ("net", spec.input_decl, spec.output_decl)


def test_gzipped_2_0_file(tmp_path):
    text = HEADER + BOX + "(assert (<= Y[0] Y[1]))"
    path = tmp_path / "prop.vnnlib.gz"
    path.write_bytes(gzip.compress(text.encode()))
    assert_specs_equal(read_spec(path, 2, 3), parse_spec(text))
    bad = tmp_path / "bad.vnnlib.gz"
    bad.write_bytes(gzip.compress((HEADER + "(assert (<= Y[3] 0))").encode()))
    with pytest.raises(SpecError, match=re.escape(f"{bad}:5:13: index out of range: Y[3] for Y float32 [3]")):
        read_spec(bad)


# ---- malformed and unsupported input: message and line:column --------------------------

ERRORS = [
    # (text after HEADER (4 lines), line, col, what)
    ("(assert (<= X[0,2] 1))", 5, 13, "index out of range: X[0,2] for X float32 [1,2]"),
    ("(assert (<= X[0] 1))", 5, 13, "X[0] has 1 index(es), X float32 [1,2] has 2 dimension(s)"),
    ("(assert (<= X 1))", 5, 13, "X has shape [1,2]: name one entry, e.g. X[0,0]"),
    ("(assert (<= X[0,a] 1))", 5, 13, "bad index 'X[0,a]'"),
    ("(assert (<= Z[0] 1))", 5, 13, "undeclared variable Z"),
    ("(assert (<= net 1))", 5, 13, "net is the network's name, not a variable"),
    ("(assert (<= Y[0] foo))", 5, 18, "undeclared variable foo"),
    ("(assert (<= Y[0] 1.2.3))", 5, 18, "bad number '1.2.3'"),
    ("(assert (<= Y[0]))", 5, 9, "wrong arity: '<=' takes 2 arguments, got 1"),
    ("(assert (!= Y[0] Y[1] Y[2]))", 5, 9, "wrong arity: '!=' takes 2 arguments, got 3"),
    ("(assert (not (<= Y[0] 1)))", 5, 10, "unsupported operator 'not'"),
    ("(assert (<= Y[0] 1)", 5, 1, "unbalanced parentheses"),
    ("(assert (<= (* Y[0] Y[1]) 1))", 5, 13, "unsupported: product of variables"),
    ("(assert (<= (* X[0,0] X[0,0]) 1))", 5, 13, "unsupported: product of variables"),
    ("(assert (<= X[0,0] Y[0]))", 5, 9, "unsupported: atom mixes input and output variables (X[0,0], Y[0])"),
    ("(assert (<= (+ X[0,0] X[0,1]) 1))", 5, 9, "unsupported: atom relates several input variables (X[0,0], X[0,1])"),
    ("(assert (!= X[0,0] 1))", 5, 9, "unsupported: '!=' on input variables (X[0,0])"),
    ("(check-sat)", 5, 2, "unsupported: unknown command 'check-sat'"),
    ("(declare-const X_0 Real)", 5, 2, "unsupported: unknown command 'declare-const'"),
    ("(declare-network g (declare-input A Real [1]) (declare-output B Real [1]))", 5, 2,
     "unsupported: a second declare-network"),
    ("(vnnlib-version <2.0>)", 5, 1, "vnnlib-version is given twice"),
    ("(assert (and (>= X[0,0] 2) (<= X[0,0] 1)))", 5, 28, "empty input box: X[0,0] has lower bound 2.0 > upper"),
]


@pytest.mark.parametrize(("body", "line", "col", "what"), ERRORS)
def test_malformed_asserts(body, line, col, what):
    msg = error(HEADER + body)
    assert msg.startswith(f"<string>:{line}:{col}: "), msg
    assert what in msg, msg


NETWORK_ERRORS = [
    # (the declare-network command, line 2 of the text; col, what)
    ("(declare-network f (declare-input X int8 [2]) (declare-output Y Real []))", 37, "unsupported: element type int8"),
    ("(declare-network f (declare-input X Real [2]) (declare-output Y bool []))", 65, "unsupported: element type bool"),
    ("(declare-network f (declare-input X Reel [2]) (declare-output Y Real []))", 37, "unknown element type 'Reel'"),
    ("(declare-network f (declare-input X Real [2]) (declare-hidden H Real [2] \"h\") (declare-output Y Real []))",
     48, "unsupported: declare-hidden"),
    ("(declare-network f (declare-input X Real [2]) (declare-input Z Real [2]) (declare-output Y Real []))",
     48, "unsupported: a second declare-input"),
    ("(declare-network f (declare-input X Real [2]) (declare-output Y Real []) (declare-output Z Real []))",
     75, "unsupported: a second declare-output"),
    ("(declare-network g (equal-to f) (declare-input X Real [2]) (declare-output Y Real []))", 21,
     "unsupported: equal-to"),
    ("(declare-network g (isomorphic-to f) (declare-input X Real [2]) (declare-output Y Real []))", 21,
     "unsupported: isomorphic-to"),
    ("(declare-network f (declare-input X Real [2] initialized) (declare-output Y Real []))", 46,
     "unsupported: initialized inputs"),
    ("(declare-network f (declare-output Y Real []) (declare-input X Real [2]))", 48,
     "declare-input must come before declare-output"),
    ("(declare-network f (declare-input X Real [2]))", 1, "network f declares no output"),
    ("(declare-network f (declare-input X Real [2,0]) (declare-output Y Real []))", 37, "bad shape '[2,0]'"),
    ("(declare-network f (declare-input X Real [-2]) (declare-output Y Real []))", 37, "bad shape '[-2]'"),
    ("(declare-network f (declare-input X Real 2) (declare-output Y Real []))", 42, "expected a shape like [1,5]"),
    ("(declare-network f (declare-input X Real) (declare-output Y Real []))", 20, "declare-input takes a name"),
    ("(declare-network f (declare-input X Real [2]) (declare-output X Real []))", 63, "X is declared twice"),
    ("(declare-network X (declare-input X Real [2]) (declare-output Y Real []))", 35, "X is declared twice"),
    ("(declare-network (declare-input X Real [2]) (declare-output Y Real []))", 1, "declare-network takes a name"),
]


@pytest.mark.parametrize(("network", "col", "what"), NETWORK_ERRORS)
def test_malformed_and_unsupported_declarations(network, col, what):
    msg = error("(vnnlib-version <2.0>)\n" + network)
    assert msg.startswith(f"<string>:2:{col}: "), msg
    assert what in msg, msg


def test_version_and_order_errors():
    assert error("(vnnlib-version <3.0>)") == (
        "<string>:1:17: unsupported: VNN-LIB version <3.0> (this reader reads 1.0 and 2.x)")
    assert error("(vnnlib-version two)").startswith("<string>:1:17: expected a version like <2.0>")
    msg = error("(vnnlib-version <2.0>)\n(assert (<= X[0] 1))")
    assert msg == "<string>:2:13: undeclared variable X (no declare-network before this assert)"
    msg = error("(vnnlib-version <2.0>)\n(assert (<= 0 1))\n" + HEADER.split("\n", 1)[1])
    assert msg == "<string>:3:2: declare-network must come before the asserts"
    assert error("(vnnlib-version <2.0>)") == "<string>: declares no network (declare-network NAME " \
        "(declare-input ...) (declare-output ...))"
    # a 2.0 text without its version line is read as 1.0, which names the missing header
    msg = error(HEADER.split("\n", 1)[1] + BOX)
    assert msg.startswith("<string>:1:2: unexpected command 'declare-network': a VNN-LIB 2.0 file starts with")


def test_reading_2_0_needs_only_numpy():
    code = (
        "import sys; from vnnlib import parse_spec; "
        f"parse_spec({HEADER + BOX!r} + '(assert (<= Y[0] 0))'); "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'verifier', 'onnx', 'scipy')); "
        "sys.exit(' '.join(bad) or None)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


# ---- counterexamples in the 2.0 assignment format ---------------------------------------

ASSIGNMENT_HEADER = re.compile(r"^(\S+)\s+(\S+)\s+\[([0-9,\s]*)\]$")  # as VNN-COMP 2026's checker reads it


def parse_assignment(text: str, spec: Spec) -> tuple[np.ndarray, np.ndarray]:
    """``x`` and ``y`` from the lines after ``sat``, checking each header against the declarations."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    values = []
    for decl in (spec.input_decl, spec.output_decl):
        m = ASSIGNMENT_HEADER.match(lines.pop(0))
        assert m is not None
        shape = tuple(int(d) for d in m.group(3).split(",") if d.strip())
        assert (m.group(1), m.group(2), shape) == (decl.name, decl.dtype, decl.shape)
        values.append(np.array([float(v) for v in lines[: decl.size]]))
        del lines[: decl.size]
    assert not lines
    return values[0], values[1]


def test_write_assignment_formats():
    spec = parse("(assert (<= Y[0] 0))")
    x, y = np.array([0.1, -2.0]), np.array([1.0, 1 / 3, -0.0])
    text = write_assignment(spec, x, y)
    assert text.splitlines() == ["X float32 [1,2]", "0.1", "-2.0", "Y float32 [3]", "1.0", repr(1 / 3), "-0.0"]
    assert [a.tolist() for a in parse_assignment(text, spec)] == [x.tolist(), y.tolist()]
    scalar = parse_spec(HEADER.replace("[3]", "[]") + BOX + "(assert (<= Y 0))")
    assert write_assignment(scalar, x, [2.5]).splitlines()[-2:] == ["Y float32 []", "2.5"]
    assert write_assignment(None, [1.0], [2.0]) == "((X_0 1.0)\n (Y_0 2.0))"
    with pytest.raises(SpecError, match=r"Y float32 \[3\] needs 3 values, got 2"):
        write_assignment(spec, x, y[:2])




def run_verify(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "verifier.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=180, cwd=REPO)


def test_verify_end_to_end_on_a_2_0_spec(tmp_path):
    from verifier.errors import EXIT_BAD_INPUT, EXIT_OK
    from verifier.validate import validate_counterexample

    prop = MODELS / "test_prop_v2.vnnlib"  # test_prop.vnnlib in 2.0, with the model's shapes
    spec = read_spec(prop, 5, 5)
    assert spec.input_decl == TensorDecl("X", "float32", (1, 1, 1, 5))
    assert spec.output_decl == TensorDecl("Y", "float32", (1, 5))
    assert_specs_equal(spec, read_spec(MODELS / "test_prop.vnnlib"))

    out = tmp_path / "result.txt"
    proc = run_verify(MODELS / "test_sat.onnx", prop, "--timeout", 60, "--out", out, "-q")
    assert proc.returncode == EXIT_OK, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "sat" and lines[1] == "X float32 [1,1,1,5]" and lines[7] == "Y float32 [1,5]"
    assert out.read_text() == proc.stdout
    x, y = parse_assignment("\n".join(lines[1:]), spec)
    cex = validate_counterexample(MODELS / "test_sat.onnx", spec, x)
    assert cex is not None
    np.testing.assert_allclose(cex.y, y, rtol=1e-6, atol=1e-6)

    proc = run_verify(MODELS / "test_unsat.onnx", prop, "--timeout", 60)
    assert proc.returncode == EXIT_OK and proc.stdout == "unsat\n", proc.stderr

    bad = tmp_path / "poly.vnnlib"
    bad.write_text(prop.read_text() + "(assert (<= (* Y[0,0] Y[0,1]) 1))\n")
    proc = run_verify(MODELS / "test_sat.onnx", bad)
    assert proc.returncode == EXIT_BAD_INPUT and proc.stdout == "error\n"
    assert re.fullmatch(r"verify: error: spec: \S+poly\.vnnlib:\d+:13: unsupported: product of variables.*\n",
                        proc.stderr), proc.stderr
    proc = run_verify(MODELS / "test_tiny.onnx", prop)
    assert proc.returncode == EXIT_BAD_INPUT
    assert "declares input X float32 [1,1,1,5] (5 values) but the model has 1 inputs" in proc.stderr
