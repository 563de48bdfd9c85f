"""Tests for genbound.layers: AdapterLinear's update against dense float64 oracles, chain links
(next_link, reset_link_state) and the equivalences of the methods table of docs/design.md (cLA = LoRA with a
frozen selector A; PaCA on the first r columns = cLA with s = 1)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from genbound.build import Built, build
from genbound.data import load_task
from genbound.layers import AdapterLinear, next_link
from genbound.methods import ADAPTER, get_method, method_names
from genbound.runtime import generator
from genbound.methods.base import gaussian_a
from genbound.models import resolve_ref
from genbound.train import TrainConfig, make_optimizer, reset_link_state

R, ALPHA, K = 4, 8.0, 3
HIDDEN = [32, 32]  # digits: hidden.0 is 32 x 64, hidden.1 is 32 x 32 (n x m)
ADAPTERS = [m for m in method_names() if get_method(m).scope == ADAPTER]
CHAINS = [m for m in ADAPTERS if get_method(m).chain]
EXACT = {"rtol": 0.0, "atol": 1e-10}


@pytest.fixture(scope="module")
def digits():
    return load_task("digits", seed=0)


def build_mlp(task, method: str, *, seed: int = 0, alpha: float = ALPHA) -> Built:
    """The float64 MLP with ``method``'s adapters (k = K links for chains)."""
    chain = K if get_method(method).chain else 1
    built = build(resolve_ref("mlp", hidden=HIDDEN), task, method, R, alpha, chain, seed)
    built.model.double()
    return built


def batches(task, n: int, size: int = 64) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(task.train.x[i * size:(i + 1) * size].double(), task.train.y[i * size:(i + 1) * size])
            for i in range(n)]


def adam_steps(built: Built, opt: torch.optim.Optimizer, data) -> None:
    for x, y in data:
        opt.zero_grad()
        F.cross_entropy(built.model(x), y).backward()
        opt.step()


@torch.no_grad()
def perturb(layer: AdapterLinear, gen: torch.Generator) -> None:
    """Add Gaussian noise to every trainable tensor of the current link."""
    for p in layer.parameters(recurse=False):
        if p.requires_grad:
            p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype))


def selected(layer: AdapterLinear) -> torch.Tensor:
    """Column indices of every link of a selector/PaCA layer, in link order."""
    return torch.cat([layer.frozen_idx, layer.idx])


# ----------------------------------------------------------------------------- the update itself


@pytest.mark.parametrize("method", ADAPTERS)
def test_delta_weight_is_the_update_and_merges(digits, method: str) -> None:
    """After random perturbation of every link: rank(dW) = k*r (<= k*r in general), layer(x) - (x W0^T + b)
    = x dW^T, and the model with merged nn.Linear layers gives the same outputs (float64)."""
    built = build_mlp(digits, method)
    k = K if built.method.chain else 1
    gen = torch.Generator().manual_seed(1)
    for link in range(k):
        if link:
            next_link(built.model, link)
        for layer in built.layers.values():
            perturb(layer, gen)
    x = torch.randn(16, 64, generator=gen, dtype=torch.float64)
    merged = copy.deepcopy(built.model)
    for name, layer in built.layers.items():
        dw = layer.delta_weight()
        assert dw.shape == layer.weight.shape and dw.dtype == torch.float64
        # generic noise: the bound rank <= k*r is attained; DoRA's per-row rescaling of W0 is full-rank
        assert torch.linalg.matrix_rank(dw) == (min(dw.shape) if method == "dora" else k * R)
        h = torch.randn(16, layer.in_features, generator=gen, dtype=torch.float64)
        torch.testing.assert_close(layer(h) - F.linear(h, layer.weight, layer.bias), h @ dw.T, **EXACT)
        lin = layer.merged()
        assert type(lin) is nn.Linear and not torch.equal(lin.weight, layer.weight)
        torch.testing.assert_close(lin(h), layer(h), **EXACT)
        merged.hidden[int(name.rpartition(".")[2])] = lin
    torch.testing.assert_close(merged(x), built.model(x), **EXACT)


def test_cla_gathers_like_a_dense_selector(digits) -> None:
    """cLA: y = x (W0 + s B A_sel)^T + b with A_sel = rows idx of the identity, without a dense A."""
    built = build_mlp(digits, "cla")
    gen = torch.Generator().manual_seed(2)
    for layer in built.layers.values():
        m = layer.in_features
        assert torch.equal(layer.idx, torch.arange(R))
        assert not [t for t in layer.state_dict().values() if t.shape == (R, m)]  # no dense A stored
        perturb(layer, gen)
        a_sel = torch.eye(m, dtype=torch.float64)[layer.idx]
        x = torch.randn(8, m, generator=gen, dtype=torch.float64)
        oracle = x @ (layer.weight + layer.scale * layer.lora_B @ a_sel).T + layer.bias
        torch.testing.assert_close(layer(x), oracle, **EXACT)


def test_cla_trajectory_equals_lora_with_frozen_selector(digits) -> None:
    """Asym-LoRA with A overwritten by the selector matrix follows cLA's B trajectory under AdamW."""
    cla, dense = build_mlp(digits, "cla"), build_mlp(digits, "asym")
    with torch.no_grad():
        for name, layer in dense.layers.items():
            layer.lora_A.copy_(torch.eye(layer.in_features, dtype=torch.float64)[cla.layers[name].idx])
    cfg = TrainConfig(lr=1e-2)
    data = batches(digits, 5)
    for built in (cla, dense):
        adam_steps(built, make_optimizer(built, cfg), data)
    for name, layer in cla.layers.items():
        assert layer.lora_B.abs().max() > 1e-3  # it moved
        torch.testing.assert_close(dense.layers[name].lora_B, layer.lora_B, rtol=0.0, atol=1e-6)


def test_paca_first_columns_equals_cla_with_unit_scale(digits) -> None:
    """PaCA on columns 0..r-1 and cLA with alpha = r (s = 1): same dW after 5 Adam steps (no weight decay)."""
    cla, paca = build_mlp(digits, "cla", alpha=float(R)), build_mlp(digits, "paca")
    assert next(iter(cla.layers.values())).scale == 1.0
    with torch.no_grad():
        for layer in paca.layers.values():
            assert not torch.equal(layer.idx, torch.arange(R))  # the seeded choice is not the first r
            layer.idx = torch.arange(R)
            layer.w0_cols = layer.weight[:, :R].clone()
            layer.columns.copy_(layer.w0_cols)
    cfg = TrainConfig(lr=1e-2, weight_decay=0.0)
    data = batches(digits, 5)
    for built in (cla, paca):
        adam_steps(built, make_optimizer(built, cfg), data)
    for name, layer in cla.layers.items():
        dw = layer.delta_weight()
        assert dw.abs().max() > 1e-3
        torch.testing.assert_close(paca.layers[name].delta_weight(), dw, rtol=0.0, atol=1e-6)


# ----------------------------------------------------------------------------- chains


@pytest.mark.parametrize("method", CHAINS)
def test_next_link_merges_restarts_and_resets_optimizer(digits, method: str) -> None:
    """At each boundary: the output is continuous, the finished link moves into the frozen factors, the
    new B is zero, dense chains draw a new A, and AdamW forgets the link tensors but keeps the head."""
    built = build_mlp(digits, method)
    model, layers = built.model, built.layers
    opt = make_optimizer(built, TrainConfig(lr=1e-2))
    data = batches(digits, 2)
    x = digits.test.x[:64].double()
    for link in range(1, K):
        adam_steps(built, opt, data)
        old = {n: (la.link_B().clone(), la.lora_A.clone() if hasattr(la, "lora_A") else la.idx.clone())
               for n, la in layers.items()}
        frozen_before = {n: la.frozen_B.clone() for n, la in layers.items()}
        before = model(x)
        next_link(model, link)
        torch.testing.assert_close(model(x), before, rtol=0.0, atol=1e-12)
        for name, layer in layers.items():
            b_old, a_old = old[name]
            assert b_old.abs().max() > 0
            assert layer.frozen_B.shape == (layer.out_features, link * R)
            assert torch.equal(layer.frozen_B, torch.cat([frozen_before[name], b_old], 1))
            assert torch.equal(layer.lora_B, torch.zeros_like(layer.lora_B))
            frozen_a = layer.frozen_A if hasattr(layer, "lora_A") else layer.frozen_idx
            assert frozen_a.shape[0] == link * R and torch.equal(frozen_a[-R:], a_old)
            current = layer.lora_A if hasattr(layer, "lora_A") else layer.idx
            assert not torch.equal(current, a_old)  # a fresh A / the next window
        head_w = model.head.weight
        head_state = {key: v.clone() for key, v in opt.state[head_w].items()}
        link_tensors = [p for la in layers.values() for p in la.parameters(recurse=False) if p.requires_grad]
        assert all(opt.state[p] for p in link_tensors)
        reset_link_state(opt, built)
        assert not any(opt.state.get(p) for p in link_tensors)
        assert head_state and opt.state[head_w].keys() == head_state.keys()
        assert all(torch.equal(opt.state[head_w][key], v) for key, v in head_state.items())
    adam_steps(built, opt, data)
    assert all(la.lora_B.abs().max() > 0 for la in layers.values())  # the last link trains


@pytest.mark.parametrize("method", ["asym", "rac"])
def test_frozen_random_a_never_trains(digits, method: str) -> None:
    """Asym-LoRA/RAC: A is the seeded Gaussian of its link, requires no grad and survives AdamW steps."""
    built = build_mlp(digits, method)
    opt = make_optimizer(built, TrainConfig(lr=1e-2))
    k = K if built.method.chain else 1
    for link in range(k):
        if link:
            next_link(built.model, link)
            reset_link_state(opt, built)
        adam_steps(built, opt, batches(digits, 3))
        for name, layer in built.layers.items():
            assert not layer.lora_A.requires_grad and layer.lora_B.abs().max() > 0
            drawn = gaussian_a(R, layer.in_features, generator(0, name, link)).double()
            assert torch.equal(layer.lora_A, drawn)
            if link:
                previous = gaussian_a(R, layer.in_features, generator(0, name, link - 1)).double()
                assert torch.equal(layer.frozen_A[-R:], previous)


def test_adapter_linear_shares_the_frozen_base() -> None:
    """W0 and b are the base layer's own tensors (not copies); a selector stores long indices, no A."""
    base = nn.Linear(6, 5)
    layer = AdapterLinear(base, get_method("lora"), 2, 4.0, name="q", seed=0)
    assert layer.weight is base.weight and layer.bias is base.bias
    assert layer.scale == 2.0  # s = alpha / r
    sel = AdapterLinear(nn.Linear(6, 5), get_method("cla"), 2, 4.0, name="q", seed=0)
    assert sel.idx.dtype == torch.long and torch.equal(sel.idx, torch.tensor([0, 1])) and not hasattr(sel, "lora_A")
