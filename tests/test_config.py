"""Configuration: defaults, YAML, overrides, and the errors for unknown keys and bad values."""

import pytest

from verifier.config import Config, load_config
from verifier.errors import ConfigError


def test_defaults_are_frozen():
    c = load_config()
    assert c == Config() and c.engine == "auto" and c.device == "cpu"
    with pytest.raises(AttributeError):
        c.seed = 3  # type: ignore[misc]


def test_yaml_then_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("seed: 7\nattack:\n  steps: 11\n  enabled: false\nbab:\n  input:\n    batch_size: 64\n")
    c = load_config(f, {"attack": {"steps": 5}})
    assert (c.seed, c.attack.steps, c.attack.enabled, c.bab.input.batch_size) == (7, 5, False, 64)


def test_two_configs_do_not_interfere():
    a = load_config(overrides={"seed": 1})
    b = load_config(overrides={"seed": 2})
    assert (a.seed, b.seed, Config().seed) == (1, 2, 0)


@pytest.mark.parametrize("text, fragment", [
    ("sede: 1\n", "unknown key(s) sede"),
    ("attack:\n  stepz: 1\n", "attack: unknown key(s) stepz"),
    ("engine: magic\n", "engine: 'magic' is not one of"),
    ("seed: [1, 2]\n", "seed"),
    ("attack: 3\n", "expected a mapping"),
    ("a: [unclosed\n", "not valid YAML"),
    ("bab:\n  relu:\n    branching: fbs\n", "bab.relu.branching: 'fbs' is not one of 'babsr', 'fsb'"),
    ("bab:\n  relu:\n    intermediate: fix\n", "bab.relu.intermediate: 'fix' is not one of 'recompute', 'fixed'"),
    ("bab:\n  input:\n    strong_branching: ful\n", "bab.input.strong_branching: 'ful' is not one of"),
    ("bab:\n  branching: inputs\n", "bab.branching: 'inputs' is not one of"),
    ("bab:\n  relu_branching: fsb\n", "bab: unknown key(s) relu_branching"),
])
def test_bad_config_files(tmp_path, text, fragment):
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=None) as info:
        load_config(f)
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "nope.yaml")


def test_reading_a_config_imports_no_engine():
    """Config composes option dataclasses that live apart from their engines: no torch, no solver."""
    import subprocess
    import sys

    code = ("import sys, verifier.config as c; c.load_config(overrides={'bab': {'relu': {'branching': 'babsr'}}}); "
            "print(sorted(m for m in ('torch', 'highspy', 'z3', 'onnx') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_input_splitting_picks_its_intermediate_bounds_and_scoring_by_the_networks_shape() -> None:
    """auto: forward linear bounds alone on few inputs (TLL's 2), CROWN filtered by them up to 16 inputs
    (cifar_biasfield), plain CROWN on small or wide-input networks; strong branching by full CROWN
    estimates except under the filter, where each candidate would cost full backward passes."""
    from verifier.bab.options import InputSplitOptions

    opts = InputSplitOptions()
    assert opts.forward_mode(2, 4000) == "on"
    assert opts.forward_mode(16, 45056) == "filter"
    assert opts.forward_mode(5, 300) == "off"  # ACAS Xu
    assert opts.forward_mode(784, 1024) == "off"
    assert InputSplitOptions(forward="off").forward_mode(2, 4000) == "off"
    assert opts.branching_score("filter") == "linear" and opts.branching_score("on") == "full"
    assert InputSplitOptions(strong_branching="final").branching_score("filter") == "final"
    # a network that narrows with depth (TLL N=64: 8192 neurons down to 4): backward passes on the layers of
    # at most 1/32 of the widest, scored on the spec rows; uniform widths stay with forward bounds alone
    tll = [8192, 4096, 2048, 1024, 512, 256, 128, 64, 32, 16, 8, 4]
    assert opts.forward_choice(2, tll) == ("filter", 256)
    assert opts.branching_score("filter", 256) == "final"
    assert opts.forward_choice(2, [500, 500, 500]) == ("on", None)
    assert opts.forward_choice(16, [16384, 8192, 4096]) == ("filter", None)
    assert opts.forward_choice(5, [50] * 6) == ("off", None)
    assert InputSplitOptions(narrow_share=0).forward_choice(2, tll) == ("on", None)


def test_unquoted_on_and_off_mean_the_choices_yaml_reads_as_booleans(tmp_path) -> None:
    path = tmp_path / "c.yaml"
    for text, want in (("on", "on"), ("off", "off"), ("'filter'", "filter")):
        path.write_text(f"bab:\n  input:\n    forward: {text}\n")
        assert load_config(path).bab.input.forward == want
    path.write_text("bab:\n  input:\n    contract: off\n")
    assert load_config(path).bab.input.contract is False  # a bool field stays a bool
