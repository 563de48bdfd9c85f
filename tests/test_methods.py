"""The method matrix (docs/design.md methods table, docs/theory.md section 3): every registered method on a tiny
MLP (and tiny-bert) starts at the base, trains exactly its tensors, has the paper's parameter count,
round-trips through a checkpoint, and refuses impossible ranks; chains and selectors are checked on
real training runs."""

from __future__ import annotations

import csv
import itertools
import math
import shutil
from fractions import Fraction
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch.func import functional_call

from genbound import checkpoint
from genbound import train as train_module
from genbound.build import Built, build, parameter_counts
from genbound.data import load_task
from genbound.errors import MethodError
from genbound.methods import ADAPTER, get_method, method_names
from genbound.runtime import generator
from genbound.methods.base import gaussian_a, kaiming_a
from genbound.models import resolve_ref
from genbound.runtime import logits as logits_of
from genbound.runtime import evaluate
from genbound.train import TrainConfig, make_optimizer, train

R, ALPHA, K = 4, 8.0, 3
HIDDEN = [32, 32]
MATRICES = {"hidden.0": (32, 64), "hidden.1": (32, 32)}  # (n, m) of the adapted MLP layers on digits
HEAD_SIZE = 32 * 10 + 10
ALL_WEIGHTS = 64 * 32 + 32 + 32 * 32 + 32 + HEAD_SIZE
METHODS = method_names()
ADAPTERS = [m for m in METHODS if get_method(m).scope == ADAPTER]
CHAINS = [m for m in METHODS if get_method(m).chain]
SELECTORS = ["rcla", "rc3la", "paca"]
LINK_TENSORS = {  # what trains besides the head (docs/design.md methods table)
    "head": set(), "lora": {"lora_A", "lora_B"}, "lora_plus": {"lora_A", "lora_B"}, "cola": {"lora_A", "lora_B"},
    "asym": {"lora_B"}, "rac": {"lora_B"}, "cla": {"lora_B"}, "rcla": {"lora_B"}, "c3la": {"lora_B"},
    "rc3la": {"lora_B"}, "paca": {"columns"}, "dora": {"lora_A", "lora_B", "magnitude"}, "vera": {"vera_d", "vera_b"},
}


def chain_of(method: str) -> int:
    return K if get_method(method).chain else 1


def build_mlp(task, method: str, *, seed: int = 0, rank: int = R, chain: int | None = None,
              hidden: list[int] = HIDDEN, targets: list[str] | None = None) -> Built:
    chain = chain_of(method) if chain is None else chain
    return build(resolve_ref("mlp", hidden=hidden), task, method, rank, ALPHA, chain, seed, targets)


def build_bert(task, method: str, seed: int = 0) -> Built:
    return build(resolve_ref("tiny-bert", max_length=32), task, method, R, ALPHA, chain_of(method), seed)


@pytest.fixture(scope="module")
def digits():
    return load_task("digits", seed=0)


@pytest.fixture(scope="module")
def text_task(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "tiny.csv"
    words = ["good", "fine", "great", "bad", "poor", "awful"]
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        for i, (a, b) in enumerate(itertools.product(words, words)):
            writer.writerow([f"the movie was {a} and the plot {b} number {i}", int(words.index(a) < 3)])
    return load_task(str(path), seed=0)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """train(method, steps) -> (checkpoint dir, manifest, the Built that trained), one run per key."""
    runs: dict[tuple[str, int], tuple[Path, dict, Built]] = {}

    def run(method: str, steps: int = 20) -> tuple[Path, dict, Built]:
        if (method, steps) not in runs:
            out = tmp_path_factory.mktemp(f"{method}-{steps}")
            cfg = TrainConfig(method=method, hidden=HIDDEN, steps=steps, rank=R, alpha=ALPHA,
                              chain=chain_of(method), eval_samples=100, device="cpu")
            seen: list[Built] = []

            def keep(*args, **kwargs) -> Built:
                seen.append(build(*args, **kwargs))
                return seen[-1]

            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(train_module, "build", keep)
                manifest = train(cfg, out, progress=False)
            runs[method, steps] = (out, manifest, seen[0])
        return runs[method, steps]

    return run


def test_registry_holds_the_design_methods() -> None:
    assert sorted(METHODS) == sorted(["full", *LINK_TENSORS]) and len(METHODS) == 14
    assert set(CHAINS) == {"cola", "rac", "c3la", "rc3la"}


# ----------------------------------------------------------------------------- start, steps, counts


@pytest.mark.parametrize("method", METHODS)
def test_output_equals_base_at_init_mlp(digits, method: str) -> None:
    x = digits.test.x[:64].double()
    base = build_mlp(digits, "head").model.double().eval()
    built = build_mlp(digits, method)
    model = built.model.double().eval()
    restart_magnitudes(built)
    torch.testing.assert_close(model(x), base(x), rtol=0.0, atol=1e-12)


def restart_magnitudes(built: Built) -> None:
    """DoRA's m = ||W0||_row was taken in float32 before the cast to float64: take it again in float64, so that
    W = m (W0 + s B A) / ||W0 + s B A||_row = W0 can be checked to float64 precision."""
    with torch.no_grad():
        for layer in built.layers.values():
            if hasattr(layer, "magnitude"):
                layer.magnitude.copy_(torch.linalg.norm(layer.weight, dim=1))


@pytest.mark.parametrize("method", METHODS)
def test_output_equals_base_at_init_tiny_bert(text_task, method: str) -> None:
    base, built = build_bert(text_task, "head"), build_bert(text_task, method)
    batch = built.backbone.encode(text_task.test)
    expected = logits_of(base.model.double().eval(), batch)
    built.model.double()
    restart_magnitudes(built)
    torch.testing.assert_close(logits_of(built.model.eval(), batch), expected, rtol=0.0, atol=1e-12)


@pytest.mark.parametrize("method", METHODS)
def test_only_the_intended_tensors_change(digits, method: str) -> None:
    """Two AdamW steps (the second lets LoRA's A move: B = 0 gives A no gradient at first)."""
    built = build_mlp(digits, method)
    model = built.model
    opt = make_optimizer(built, TrainConfig(method=method, lr=1e-2))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for i in range(2):
        opt.zero_grad()
        F.cross_entropy(model(digits.train.x[i * 64:(i + 1) * 64]), digits.train.y[i * 64:(i + 1) * 64]).backward()
        opt.step()
    after = model.state_dict()
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    if method == "full":
        expected = set(after)
    else:
        expected = {k for k in after if k.startswith("head.") or k.rpartition(".")[2] in LINK_TENSORS[method]}
    assert changed == expected
    for name in built.targets:  # frozen W0 stays bitwise equal
        assert torch.equal(after[f"{name}.weight"], before[f"{name}.weight"])
        assert torch.equal(after[f"{name}.bias"], before[f"{name}.bias"])


def paper_count(method: str) -> int:
    """docs/theory.md section 3, from the layer sizes alone."""
    dense = R * sum(n + m for n, m in MATRICES.values())
    columns = R * sum(n for n, _ in MATRICES.values())
    outputs = sum(n for n, _ in MATRICES.values())
    per_link = {"lora": dense, "lora_plus": dense, "cola": dense, "full": ALL_WEIGHTS, "head": HEAD_SIZE,
                "dora": dense + outputs, "vera": R * len(MATRICES) + outputs}
    return per_link.get(method, columns) * chain_of(method)


@pytest.mark.parametrize("method", METHODS)
def test_parameter_counts_match_theory(digits, method: str) -> None:
    built = build_mlp(digits, method)
    counts = parameter_counts(built)
    full = paper_count(method) + (0 if method in ("full", "head") else HEAD_SIZE)
    assert counts == {"paper": paper_count(method), "full": full, "head": HEAD_SIZE}
    if built.method.scope == ADAPTER:  # k times the scalars that train in one link
        trainable = sum(p.numel() for n, p in built.model.named_parameters()
                        if p.requires_grad and not n.startswith("head."))
        assert counts["paper"] == chain_of(method) * trainable


@pytest.mark.parametrize("target", MATRICES)
def test_lora_over_cla_count_ratio(digits, target: str) -> None:
    n, m = MATRICES[target]
    lora, cla = (parameter_counts(build_mlp(digits, meth, targets=[f"^{target}$"]))["paper"]
                 for meth in ("lora", "cla"))
    assert Fraction(lora, cla) == Fraction(m + n, n)


# ----------------------------------------------------------------------------- checkpoints


@pytest.mark.parametrize("method", METHODS)
def test_save_load_gives_identical_logits(trained, method: str) -> None:
    out, manifest, built = trained(method)
    loaded = checkpoint.load(out)
    test_in = built.backbone.encode(loaded.task.test)
    built.model.eval()
    with torch.no_grad():
        assert torch.equal(loaded.model(**test_in), built.model(**test_in))
    test_loss = manifest["metrics"]["test_loss"]
    assert evaluate(loaded.model, test_in, loaded.task.test.y)["loss"] == pytest.approx(test_loss, abs=1e-6)
    untrained = evaluate(build_mlp(loaded.task, method).model, test_in, loaded.task.test.y)["loss"]
    assert untrained != pytest.approx(test_loss, abs=1e-6)  # training moved it, so a no-op load would fail


@pytest.mark.parametrize("method", CHAINS)
def test_chain_run_merges_every_link(trained, method: str) -> None:
    """A real 30-step run with k = 3: the checkpoint holds k-1 finished links (each trained), the current
    link, and per-link A or windows as the method prescribes."""
    out, manifest, _ = trained(method, steps=30)
    assert manifest["timing"]["steps_per_link"] == [10, 20]
    t = load_file(out / "adapter.safetensors")
    for name, (n, m) in MATRICES.items():
        frozen_b = t[f"{name}.frozen_B"]
        assert frozen_b.shape == (n, (K - 1) * R)
        assert all(b.abs().max() > 0 for b in [*frozen_b.split(R, 1), t[f"{name}.lora_B"]])  # each link trained
        if get_method(method).layout.kind == "dense":
            assert t[f"{name}.frozen_A"].shape == ((K - 1) * R, m)
            links = [*t[f"{name}.frozen_A"].split(R), t[f"{name}.lora_A"]]
            init = gaussian_a if method == "rac" else kaiming_a
            drawn = [init(R, m, generator(0, name, link)) for link in range(K)]
            assert all(not torch.equal(a, b) for a, b in itertools.combinations(drawn, 2))
            # RAC's A is exactly its draw (never trained); CoLA's A trained away from it
            assert all(torch.equal(a, d) == (method == "rac") for a, d in zip(links, drawn, strict=True))
        else:
            assert t[f"{name}.frozen_idx"].shape == ((K - 1) * R,)
            cols = torch.cat([t[f"{name}.frozen_idx"], t[f"{name}.idx"]])
            assert len(set(cols.tolist())) == K * R  # disjoint windows
            if method == "c3la":
                assert cols.tolist() == list(range(K * R))
            for w in cols.split(R):  # contiguous blocks of r, aligned to r
                assert int(w[0]) % R == 0 and w.tolist() == list(range(int(w[0]), int(w[0]) + R))


def test_rc3la_windows_depend_on_the_seed(digits) -> None:
    def windows(seed: int) -> dict[str, list[int]]:
        built = build_mlp(digits, "rc3la", seed=seed)
        for link in range(1, K):
            train_module.next_link(built.model, link)
        return {n: torch.cat([la.frozen_idx, la.idx]).tolist() for n, la in built.layers.items()}

    assert windows(0) == windows(0) and windows(0) != windows(1)
    assert windows(0)["hidden.0"] != list(range(K * R))  # not c3la's order


@pytest.mark.parametrize("method", SELECTORS)
def test_selectors_are_seeded_per_matrix(digits, method: str) -> None:
    def idx(seed: int) -> list[list[int]]:  # two 64 x 64 matrices, so the same m
        return [la.idx.tolist() for la in build_mlp(digits, method, seed=seed, hidden=[64, 64]).layers.values()]

    a, b = idx(0), idx(1)
    assert a == idx(0)
    assert a[0] != b[0] and a[1] != b[1]
    assert a[0] != a[1]
    assert all(len(set(i)) == R and max(i) < 64 for i in a)


@pytest.mark.parametrize("method", SELECTORS)
def test_selector_indices_are_restored_from_the_checkpoint(trained, tmp_path, method: str, reseal) -> None:
    """load() takes the stored indices, even ones the seed would not draw again (stale-selector defect)."""
    out, _, built = trained(method)
    assert all(torch.equal(la.idx, checkpoint.load(out).built.layers[n].idx) for n, la in built.layers.items())
    copy = tmp_path / "ckpt"
    shutil.copytree(out, copy)
    tensors = load_file(copy / "adapter.safetensors")
    moved = {}
    for name, layer in built.layers.items():
        used = set(torch.cat([layer.frozen_idx, layer.idx]).tolist())
        start = next(s for s in range(0, layer.in_features, R) if not used & set(range(s, s + R)))
        moved[name] = torch.arange(start, start + R)
        tensors[f"{name}.idx"] = moved[name]
        if method == "paca":  # keep the trained update, on the new columns
            tensors[f"{name}.columns"] = layer.weight.detach()[:, moved[name]] + layer.link_B().detach()
    save_file(tensors, copy / "adapter.safetensors")
    reseal(copy)
    for name, layer in checkpoint.load(copy).built.layers.items():
        assert torch.equal(layer.idx, moved[name])
        dw = layer.delta_weight()
        old = built.layers[name]
        torch.testing.assert_close(dw[:, moved[name]], old.scale * old.link_B().detach(), rtol=0.0, atol=1e-6)
        rest = torch.ones(layer.in_features, dtype=torch.bool)
        rest[torch.cat([layer.frozen_idx, layer.idx])] = False
        assert torch.equal(dw[:, rest], torch.zeros_like(dw[:, rest]))


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize("method", ADAPTERS)
def test_rank_zero_is_refused(digits, method: str) -> None:
    with pytest.raises(MethodError, match="--rank must be >= 1, got 0"):
        build_mlp(digits, method, rank=0)


@pytest.mark.parametrize("method", [m for m in ADAPTERS if m != "vera"])  # VeRA slices rank-r projections: any r
def test_rank_beyond_the_matrix_is_refused(digits, method: str) -> None:
    """Selectors need k*r <= m columns (hidden.1 has m = 32); a dense link needs r <= min(n, m) (hidden.0 is
    32 x 64), per link: a chain's k*r may exceed it."""
    dense = get_method(method).layout.kind in ("dense", "dora")
    largest = 32 if dense else 32 // chain_of(method)
    build_mlp(digits, method, rank=largest)  # the largest possible rank builds
    if dense:
        message = "exceeds min\\(n, m\\) = 32 of hidden.0 \\(32 x 64\\)"
    else:
        message = f"= {(largest + 1) * chain_of(method)} columns, but hidden.1 has only 32 input columns"
    with pytest.raises(MethodError, match=message):
        build_mlp(digits, method, rank=largest + 1)


@pytest.mark.parametrize("method", [m for m in METHODS if m not in CHAINS])
def test_chain_without_chain_method_is_refused(digits, method: str) -> None:
    with pytest.raises(MethodError, match=f"method {method} has no chain"):
        build_mlp(digits, method, chain=2)


def test_unknown_method_lists_the_known_ones(digits) -> None:
    with pytest.raises(MethodError, match="unknown method 'qlora'") as err:
        build_mlp(digits, "qlora")
    assert all(name in str(err.value) for name in METHODS)


# ----------------------------------------------------------------------------- torch.func


@pytest.mark.parametrize("method", ["lora", "cla"])
def test_functional_call_matches_forward(text_task, method: str) -> None:
    built = build_bert(text_task, method)
    model = built.model.eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer in built.layers.values():
            layer.lora_B.normal_(generator=gen)
    batch = built.backbone.encode(text_task.test)
    params = dict(model.named_parameters())
    out = functional_call(model, params, kwargs=batch).logits
    torch.testing.assert_close(out, model(**batch).logits, rtol=0.0, atol=0.0)
    zero_b = {n: torch.zeros_like(p) if n.endswith("lora_B") else p for n, p in params.items()}
    assert not torch.allclose(functional_call(model, zero_b, kwargs=batch).logits, out)


def test_lora_plus_gives_b_its_ratio_of_the_learning_rate(digits) -> None:
    """The optimizer groups: B (and PaCA's columns) get lr * lr_ratio, A and the head lr (16 for LoRA+ by default,
    --lr-ratio otherwise)."""
    for method, ratio, expected in (("lora_plus", None, 16.0), ("lora", None, 1.0), ("lora", 4.0, 4.0)):
        built = build_mlp(digits, method)
        opt = make_optimizer(built, TrainConfig(lr=1e-3, lr_ratio=ratio))
        lrs = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
        for layer in built.layers.values():
            assert lrs[id(layer.lora_B)] == pytest.approx(1e-3 * expected)
            assert lrs[id(layer.lora_A)] == pytest.approx(1e-3)
        assert lrs[id(built.model.head.weight)] == pytest.approx(1e-3)


def test_initial_a_distributions_against_peft_and_theory() -> None:
    """LoRA's A: PEFT's Kaiming-uniform range (a = sqrt(5): U(-1/sqrt(m), 1/sqrt(m))), checked against PEFT's own
    draw; asym/rac's frozen A: N(0, 1/m), by its sample variance over 64 x 4096 numbers (within 3%)."""
    peft = pytest.importorskip("peft")
    m = 4096
    a = kaiming_a(64, m, generator(0, "x", 0))
    model = peft.get_peft_model(torch.nn.Sequential(torch.nn.Linear(m, 64)),
                                peft.LoraConfig(r=64, target_modules=["0"]))
    theirs = model.base_model.model[0].lora_A["default"].weight.detach()
    for t in (a, theirs):
        assert float(t.abs().max()) <= 1 / math.sqrt(m) and float(t.abs().max()) > 0.99 / math.sqrt(m)
        assert float(t.var()) == pytest.approx(1 / (3 * m), rel=0.03)  # the variance of U(-b, b) is b^2 / 3
    g = gaussian_a(64, m, generator(0, "x", 0))
    assert float(g.var()) == pytest.approx(1 / m, rel=0.03) and abs(float(g.mean())) < 0.01 / math.sqrt(m) * 10
