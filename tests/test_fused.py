"""The fused training path (genbound.fused) against the reference AdapterLinear.forward: equal outputs and
gradients for every method, in float64 and under bf16 autocast, across chain boundaries and after reload."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F

from genbound import checkpoint
from genbound.build import build
from genbound.data import load_task
from genbound.layers import adapter_layers, next_link, use_fused
from genbound.methods import ADAPTER, get_method, method_names
from genbound.models import resolve_ref
from genbound.train import TrainConfig, train

ADAPTERS = [m for m in method_names() if get_method(m).scope == ADAPTER]
R, K = 4, 3


@pytest.fixture(scope="module")
def digits():
    return load_task("digits", seed=0)


def built_with_links(task, method: str, dtype=torch.float64):
    """An MLP with ``method``'s adapters, every link tensor random and (chains) two finished links."""
    chain = K if get_method(method).chain else 1
    built = build(resolve_ref("mlp", hidden=[32, 32]), task, method, R, 8.0, chain, 0)
    built.model.to(dtype)
    gen = torch.Generator().manual_seed(1)
    for link in range(chain):
        if link:
            next_link(built.model, link)
        with torch.no_grad():
            for layer in adapter_layers(built.model).values():
                for p in layer.parameters(recurse=False):
                    if p.requires_grad:
                        p.add_(0.1 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return built


def outputs_and_grads(model, x, y, fused: bool):
    model.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_(True)
    with use_fused(model, fused):
        out = model(x)
        F.cross_entropy(out.float(), y).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.detach(), x.grad.clone(), grads


@pytest.mark.parametrize("method", ADAPTERS)
def test_fused_equals_reference_float64(digits, method):
    built = built_with_links(digits, method)
    x, y = digits.train.x[:48].double(), digits.train.y[:48]
    ref = outputs_and_grads(built.model, x, y, fused=False)
    fast = outputs_and_grads(built.model, x, y, fused=True)
    torch.testing.assert_close(fast[0], ref[0], rtol=0, atol=1e-12)
    torch.testing.assert_close(fast[1], ref[1], rtol=0, atol=1e-12)
    assert fast[2].keys() == ref[2].keys() and len(ref[2]) > 1
    for name in ref[2]:
        torch.testing.assert_close(fast[2][name], ref[2][name], rtol=1e-10, atol=1e-12, msg=name)
    assert all(not layer.fused for layer in adapter_layers(built.model).values())  # restored


@pytest.mark.parametrize("method", ["lora", "asym", "cla", "c3la", "paca"])
def test_fused_under_bf16_autocast_is_as_close_as_the_reference(digits, method):
    """Under autocast both paths round; each must be as close to the float64 truth as the other, roughly."""
    built = built_with_links(digits, method, torch.float32)
    x, y = digits.train.x[:64].float(), digits.train.y[:64]
    truth_model = copy.deepcopy(built.model).double()
    truth = outputs_and_grads(truth_model, x.double(), y, fused=False)
    errs = {}
    for fused in (False, True):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out, gx, grads = outputs_and_grads(built.model, x, y, fused)
        assert out.dtype == torch.bfloat16 and gx.dtype == torch.float32
        assert all(g.dtype == torch.float32 for g in grads.values())
        errs[fused] = max([float((out.double() - truth[0]).abs().max() / truth[0].abs().max())]
                          + [float((grads[n].double() - truth[2][n]).norm() / truth[2][n].norm()) for n in grads])
    assert errs[False] < 0.2 and errs[True] < 2 * errs[False] + 1e-2, errs


@pytest.mark.parametrize("method", ["lora", "cla", "c3la", "paca"])
def test_training_uses_the_fused_path_and_reloads_to_the_same_outputs(tmp_path, method, one_thread, monkeypatch):
    from genbound.fused import FusedLowRank

    calls = []
    real = FusedLowRank.apply
    monkeypatch.setattr(FusedLowRank, "apply", lambda *a: calls.append(1) or real(*a))
    chain = K if get_method(method).chain else 1
    cfg = TrainConfig(model="mlp", data="digits", method=method, rank=R, chain=chain, steps=12,
                      batch_size=32, hidden=[32, 32], eval_samples=64)
    train(dataclasses.replace(cfg, fused=False), tmp_path / "ref", progress=False)
    assert not calls  # --no-fused: the reference path only
    train(cfg, tmp_path / method, progress=False)
    assert calls  # the default: training steps go through the fused path
    loaded = checkpoint.load(tmp_path / method)
    task = load_task("digits", seed=0)
    x, y = task.test.x[:40], task.test.y[:40]
    ref = outputs_and_grads(loaded.model, x, y, fused=False)
    fast = outputs_and_grads(loaded.model, x, y, fused=True)
    torch.testing.assert_close(fast[0], ref[0], rtol=1e-5, atol=1e-5)
    for name in ref[2]:
        torch.testing.assert_close(fast[2][name], ref[2][name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("base_dtype, keeps", [(torch.float32, True), (torch.bfloat16, False)])
def test_merged_weight_is_kept_only_where_a_frozen_layer_keeps_a_cast_copy(digits, base_dtype, keeps):
    """Under bf16 autocast a float32 W0 is cast (and the copy kept) by a frozen layer too, so the merged weight
    is kept for d x; a bf16 W0 is used as is, so the merged weight is rebuilt in backward. The gradients agree."""
    built = built_with_links(digits, "c3la", base_dtype)
    layer = next(iter(adapter_layers(built.model).values()))
    x = torch.randn(8, layer.weight.shape[1], dtype=base_dtype, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16), use_fused(built.model, True):
        y = layer(x)
    saved = y.grad_fn.saved_tensors[2]  # (x, proj, merged W, W0, ...)
    assert (saved is not None) == keeps
    if keeps:
        assert saved.dtype == torch.bfloat16 and saved.shape == layer.weight.shape
    y.float().sum().backward()
    gx = x.grad.clone()
    x.grad = None
    with torch.autocast("cpu", dtype=torch.bfloat16), use_fused(built.model, False):
        layer(x).float().sum().backward()
    torch.testing.assert_close(gx.float(), x.grad.float(), rtol=2e-2, atol=2e-2)


def test_a_trainable_w0_takes_the_reference_path(digits):
    """A head layer given adapters (targets may match it) trains its own weight: the fused path, which gives
    W0 no gradient, must step aside so the weight still gets the reference path's gradient."""
    built = build(resolve_ref("mlp", hidden=[32, 32]), digits, "lora", R, 8.0, 1, 0, targets=["head$"])
    layer = adapter_layers(built.model)["head"]
    assert layer.weight.requires_grad
    x, y = digits.train.x[:16].float(), digits.train.y[:16]
    ref = outputs_and_grads(built.model, x, y, fused=False)
    fast = outputs_and_grads(built.model, x, y, fused=True)
    assert "head.weight" in ref[2] and ref[2].keys() == fast[2].keys()
    for name in ref[2]:
        torch.testing.assert_close(fast[2][name], ref[2][name], msg=name)
