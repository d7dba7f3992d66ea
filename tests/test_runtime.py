"""Process-wide state of a run (``verifier.runtime``): set once per ``verify()`` call and restored after it;
the exported model's temporary directory lives as long as the run; the one verdict combiner."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

import verifier.api as api
from tests.nets import dense_net
from verifier.config import Config
from verifier.result import Status, combine
from verifier.runtime import runtime
from vnnlib.spec import Case, Polytope, Spec


def _problem(shift: float) -> tuple:
    net = dense_net(torch.Generator().manual_seed(7), (3, 6, 2))
    lo, hi = -np.ones(3), np.ones(3)
    # y0 - y1 <= shift: unsafe; a large shift makes every input unsafe (sat), a very negative one none (unsat)
    spec = Spec((Case(lo, hi, (Polytope(np.array([[1.0, -1.0]]), np.array([shift])),)),), 3, 2)
    return net, spec


def test_two_verify_calls_set_their_threads_and_restore_them(monkeypatch) -> None:
    seen = []
    pipeline = api.run_pipeline

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return pipeline(*args, **kwargs)

    monkeypatch.setattr(api, "run_pipeline", spy)
    before = torch.get_num_threads()
    for threads, shift in ((2, 1e6), (3, -1e6)):
        net, spec = _problem(shift)
        result = api.verify(net, spec, timeout=60, config=replace(Config(), threads=threads))
        assert result.status is (Status.SAT if shift > 0 else Status.UNSAT)
        assert seen[-1] == threads
        assert torch.get_num_threads() == before
    assert seen == [2, 3]


def test_runtime_restores_threads_and_tf32_also_on_an_exception() -> None:
    net, _ = _problem(0.0)
    before = torch.get_num_threads()
    flags = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cudnn.allow_tf32 = True
    try:
        with pytest.raises(RuntimeError), runtime(replace(Config(), threads=2, seed=5), net) as rt:
            assert torch.get_num_threads() == rt.threads == 2
            assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
            a = torch.rand(3, generator=rt.generator)
            assert torch.equal(a, torch.rand(3, generator=torch.Generator().manual_seed(5)))
            raise RuntimeError("inside the run")
        assert torch.get_num_threads() == before
        assert torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags


def test_the_exported_model_is_removed_after_the_run(monkeypatch) -> None:
    folders: list[Path] = []
    export = api._export

    def spy(net, folder: Path) -> Path:
        folders.append(folder)
        path = export(net, folder)
        assert path.is_file()
        return path

    monkeypatch.setattr(api, "_export", spy)
    net, spec = _problem(1e6)
    assert api.verify(net, spec, timeout=60).status is Status.SAT  # the replay read the exported file
    assert len(folders) == 1 and not folders[0].exists()


def test_a_network_without_its_onnx_file_is_refused_by_load_problem() -> None:
    net, spec = _problem(0.0)
    with pytest.raises(ValueError):
        api.load_problem(net, spec, Config())


@pytest.mark.parametrize("parts,whole", [
    ([], Status.UNSAT),
    ([Status.UNSAT, Status.UNSAT], Status.UNSAT),
    ([Status.UNSAT, Status.SAT, Status.TIMEOUT], Status.SAT),
    ([Status.UNSAT, Status.UNKNOWN, Status.TIMEOUT], Status.TIMEOUT),
    ([Status.UNSAT, Status.UNKNOWN], Status.UNKNOWN),
    ([Status.ERROR, Status.UNSAT], Status.UNKNOWN),
    (["unsat"], Status.UNKNOWN),  # a string is no verdict: never a proof
])
def test_combine(parts: list, whole: Status) -> None:
    assert combine(parts) is whole


def test_bounds_on_cuda_refuse_tf32_and_a_run_turns_it_off(monkeypatch) -> None:
    """The bounds never rewrite the TF32 flags: outside a run they refuse to bound on CUDA with TF32 on,
    inside one the flags are off (the device object needs no GPU)."""
    from verifier.bounds.prepare import check_no_tf32

    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    with pytest.raises(ValueError, match="TF32 is on"):
        check_no_tf32(torch.device("cuda"))
    check_no_tf32(torch.device("cpu"))
    gen = torch.Generator().manual_seed(0)
    with runtime(Config(), dense_net(gen, (2, 3, 1))):
        check_no_tf32(torch.device("cuda"))
    assert torch.backends.cudnn.allow_tf32 is True


def test_threads_one_for_small_networks_the_runs_cores_for_heavy_ones(monkeypatch) -> None:
    """One thread where a forward pass is small (per-operation overhead dominates); the run's cores
    (``bab.workers``, else the machine's) on a conv net whose forward pass takes millions of
    multiply-adds even with few weights (cifar_biasfield's shape: 32x32 feature maps)."""
    from tests.nets import Builder
    from verifier.runtime import choose_threads, forward_macs

    monkeypatch.setattr("verifier.runtime.available_cores", lambda: 6)
    gen = torch.Generator().manual_seed(0)
    small = dense_net(gen, sizes=(5, 50, 50, 5))
    assert forward_macs(small) == 5 * 50 + 50 * 50 + 50 * 5
    assert choose_threads(small, Config()) == 1
    b = Builder((16, 64, 64), gen)
    b.conv(64, k=3, padding=(1, 1, 1, 1))
    b.relu()
    heavy = b.build(dtype=torch.float32)
    weights = sum(t.numel() for n in heavy.nodes for t in vars(n.op).values() if isinstance(t, torch.Tensor))
    assert weights < 1_000_000 and forward_macs(heavy) == 64 * 64 * 64 * 16 * 9
    assert choose_threads(heavy, Config()) == 6
    assert choose_threads(heavy, replace(Config(), bab=replace(Config().bab, workers=2))) == 2
    assert choose_threads(heavy, replace(Config(), threads=3)) == 3
