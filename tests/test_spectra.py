"""Update spectra and intruder dimensions against dense float64 computations."""

import json
import math

import numpy as np
import pytest
import torch

from genbound.build import build
from genbound.cli import main
from genbound.data import load_task
from genbound.layers import next_link
from genbound.methods import ADAPTER, get_method, method_names
from genbound.spectra import EPS_GRID, SvdCache, intruder_counts, spectrum, updates
from genbound.update import batched_singular_values, spectrum_stats
from genbound.train import TrainConfig, train

ADAPTERS = [m for m in method_names() if get_method(m).scope == ADAPTER]


def perturbed(method: str, chain: int, seed: int = 0):
    task = load_task("digits", seed=0, n_train=100, n_test=50)
    built = build({"kind": "mlp", "hidden": [24, 20]}, task, method, 3, 6.0, chain, seed)
    built.model.double()  # the dense oracle dW = s * sum B_t A_t is then formed in float64
    g = torch.Generator().manual_seed(seed + 1)
    for link in range(chain):
        if link:
            next_link(built.model, link)
        with torch.no_grad():
            for layer in built.layers.values():
                for p in layer.parameters(recurse=False):
                    if p.requires_grad:
                        p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype))
    return built


@pytest.mark.parametrize("method", ADAPTERS)
def test_singular_values_from_factors_equal_the_dense_svd(method):
    chain = 3 if get_method(method).chain else 1
    built = perturbed(method, chain)
    layers = list(built.layers.values())
    batched = batched_singular_values([la.update() for la in layers])
    for layer, sv_batched in zip(layers, batched):
        dense = torch.linalg.svdvals(layer.delta_weight().detach().double())
        for sv in (layer.update().singular_values(), sv_batched):
            k = min(len(sv), len(dense))
            assert len(sv) <= (min(layer.weight.shape) if method == "dora" else chain * layer.r)
            torch.testing.assert_close(sv[:k], dense[:k], rtol=1e-8, atol=1e-10 * float(dense[0]))
            assert float(dense[k:].sum()) <= 1e-9 * float(dense[0]) * max(1, len(dense) - k)


def test_dense_updates_and_full_fine_tuning():
    task = load_task("digits", seed=0, n_train=100, n_test=50)
    init = build({"kind": "mlp", "hidden": [24, 20]}, task, "full", 1, 1.0, 1, 0).model
    tuned = build({"kind": "mlp", "hidden": [24, 20]}, task, "full", 1, 1.0, 1, 0).model
    with torch.no_grad():
        tuned.hidden[1].weight.add_(torch.randn(20, 24))
    ups = updates(tuned, init, ["hidden.0", "hidden.1"])
    assert float(ups[0].update.singular_values().max()) == 0.0
    torch.testing.assert_close(batched_singular_values([u.update for u in ups])[1],
                               torch.linalg.svdvals((tuned.hidden[1].weight - init.hidden[1].weight).double()))


def test_stable_and_effective_rank_against_direct_formulas():
    g = torch.Generator().manual_seed(0)
    m = torch.randn(30, 7, generator=g, dtype=torch.float64) @ torch.randn(7, 40, generator=g, dtype=torch.float64)
    stats = spectrum_stats(torch.linalg.svdvals(m))
    spec = float(torch.linalg.matrix_norm(m, 2))
    fro = float(torch.linalg.matrix_norm(m, "fro"))
    s = np.linalg.svd(m.numpy(), compute_uv=False)
    p = s[s > 1e-12 * s[0]] / s.sum()
    assert stats["norm_2"] == pytest.approx(spec) and stats["norm_fro"] == pytest.approx(fro)
    assert stats["stable_rank"] == pytest.approx(fro**2 / spec**2)
    assert stats["effective_rank"] == pytest.approx(math.exp(-(p * np.log(p)).sum()), rel=1e-9)
    assert 1 <= stats["effective_rank"] <= 7 and 1 <= stats["stable_rank"] <= 7
    assert spectrum_stats(torch.zeros(5))["stable_rank"] == 0.0


def direct_intruders(w0: np.ndarray, w: np.ndarray, k: int | None, eps: float) -> int:
    u0 = np.linalg.svd(w0, full_matrices=False)[0]
    u = np.linalg.svd(w, full_matrices=False)[0]
    k = u.shape[1] if k is None else k
    count = 0
    for j in range(k):
        if max(abs(float(u[:, j] @ u0[:, i])) for i in range(u0.shape[1])) < eps:
            count += 1
    return count


def test_intruder_counts_equal_a_direct_computation():
    g = torch.Generator().manual_seed(3)
    w0 = torch.randn(20, 30, generator=g, dtype=torch.float64)
    dw = 2 * torch.randn(20, 2, generator=g, dtype=torch.float64) @ torch.randn(2, 30, generator=g, dtype=torch.float64)
    u0 = torch.linalg.svd(w0, full_matrices=False)[0]
    for k in (10, None):
        got = intruder_counts(u0, w0 + dw, k, EPS_GRID)
        want = [direct_intruders(w0.numpy(), (w0 + dw).numpy(), k, e) for e in EPS_GRID]
        assert got == want
    assert max(got) > 0


def test_a_rotation_creates_intruders_and_new_singular_values_do_not():
    g = torch.Generator().manual_seed(1)
    q, _ = torch.linalg.qr(torch.randn(16, 16, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(24, 16, generator=g, dtype=torch.float64))
    s = torch.linspace(10, 1, 16, dtype=torch.float64)
    w0 = q @ torch.diag(s) @ v.T
    rescaled = q @ torch.diag(s * torch.linspace(0.5, 3, 16, dtype=torch.float64)) @ v.T
    assert intruder_counts(q, rescaled, None, [0.99]) == [0]
    angle = torch.tensor(math.pi / 4, dtype=torch.float64)
    rot = torch.eye(16, dtype=torch.float64)
    rot[0, 0], rot[0, 1], rot[1, 0], rot[1, 1] = angle.cos(), -angle.sin(), angle.sin(), angle.cos()
    rotated = (q @ rot) @ torch.diag(s) @ v.T  # the top two left singular vectors turn by 45 degrees
    assert intruder_counts(q, rotated, 10, [0.75]) == [2]
    assert intruder_counts(q, w0, 10, [0.999]) == [0]


def test_svd_cache_is_reused_and_keyed_by_the_base(tmp_path):
    w0 = torch.randn(12, 9, dtype=torch.float64)
    first = SvdCache("a" * 64, root=tmp_path)
    u, s = first.get("hidden.0", w0)
    assert first.computed == 1 and (tmp_path / "svd" / ("a" * 64) / "hidden.0.safetensors").is_file()
    again = SvdCache("a" * 64, root=tmp_path)
    u2, s2 = again.get("hidden.0", w0)
    assert again.computed == 0 and torch.equal(u, u2) and torch.equal(s, s2)
    other = SvdCache("b" * 64, root=tmp_path)
    other.get("hidden.0", 2 * w0)
    assert other.computed == 1
    stale = SvdCache("a" * 64, root=tmp_path)
    stale.get("hidden.0", torch.randn(7, 9, dtype=torch.float64))  # a shape the cached U cannot be for
    assert stale.computed == 1


def test_spectrum_result_and_cli(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GENBOUND_CACHE", str(tmp_path / "cache"))
    cfg = dict(model="mlp", data="digits", hidden=[24, 16], rank=4, alpha=8, steps=20, lr=1e-2, eval_samples=20)
    for method, k in (("lora", 1), ("c3la", 3), ("head", 1)):
        train(TrainConfig(**cfg, method=method, chain=k), tmp_path / method, progress=False)
    assert main(["spectrum", "--ckpt", str(tmp_path / "lora"), "--ckpt", str(tmp_path / "c3la"), "--intruders",
                 "--plot", str(tmp_path / "s.png"), "--json", str(tmp_path / "s.json")]) == 0
    data = json.loads((tmp_path / "s.json").read_text())
    assert [r["method"] for r in data["results"]] == ["lora", "c3la"]
    r = data["results"][1]
    assert [m["name"] for m in r["matrices"]] == ["hidden.0", "hidden.1"]
    assert len(r["matrices"][1]["singular_values"]) == 12 and r["intruders"]["eps"] == EPS_GRID
    assert set(r["intruders"]["mean_counts_per_type"]) == {"hidden"}
    assert (tmp_path / "s.png").stat().st_size > 0 and (tmp_path / "s-intruders.png").stat().st_size > 0
    assert data["results"][0]["intruders"]["svd_computed"] == 2 and r["intruders"]["svd_computed"] == 0
    capsys.readouterr()
    assert main(["spectrum", "--ckpt", str(tmp_path / "head")]) == 2
    assert "adapts no matrix" in capsys.readouterr().err


def test_spectrum_counts_match_the_layers(tmp_path):
    built = perturbed("rcla", 1)
    init = build({"kind": "mlp", "hidden": [24, 20]}, load_task("digits", seed=0, n_train=100, n_test=50),
                 "rcla", 3, 6.0, 1, 0).model
    r = spectrum(built.model, init, list(built.layers), "c" * 64, intruders=True, cache=SvdCache("c", tmp_path))
    for m, layer in zip(r["matrices"], built.layers.values()):
        dense = layer.delta_weight().detach().double()
        assert m["norm_2"] == pytest.approx(float(torch.linalg.matrix_norm(dense, 2)), rel=1e-9)
        w = (layer.weight.double() + dense).numpy()
        assert r["intruders"]["counts_per_matrix"][m["name"]][9] == direct_intruders(
            layer.weight.double().numpy(), w, 10, EPS_GRID[9])
    # the averages: over matrices, and per layer type, from the per-matrix counts by hand
    it, names = r["intruders"], list(built.layers)
    for key, per in (("mean_counts", "counts_per_matrix"), ("mean_counts_all", "counts_all_per_matrix")):
        assert it[key] == pytest.approx([sum(it[per][n][i] for n in names) / len(names) for i in range(20)])
    assert it["mean_counts_per_type"] == {"hidden": pytest.approx(it["mean_counts"])}  # both are hidden.N
    all_counts = direct_intruders(layer.weight.double().numpy(), w, None, EPS_GRID[13])
    assert it["counts_all_per_matrix"][names[-1]][13] == all_counts


def test_spectrum_loads_no_data_and_compute_still_needs_it(tmp_path, monkeypatch, capsys):
    """spectrum reads the weights alone: with the checkpoint's csv deleted it gives the same numbers (and says
    the data were not loaded); compute still refuses in one line; a changed adapter file is still refused."""
    monkeypatch.setenv("GENBOUND_CACHE", str(tmp_path / "cache"))
    csv = tmp_path / "t.csv"
    csv.write_text("text,label\n" + "".join(f"{w} {w} x{i},{w}\n" for i in range(20) for w in ["aa", "bb", "cc"]))
    ck = tmp_path / "ck"
    train(TrainConfig(model="tiny-bert", data=str(csv), method="lora", rank=2, steps=3, eval_samples=10), ck,
          progress=False)
    assert main(["spectrum", "--ckpt", str(ck), "--json", str(tmp_path / "a.json")]) == 0
    csv.unlink()
    assert main(["spectrum", "--ckpt", str(ck), "--json", str(tmp_path / "b.json")]) == 0
    a, b = (json.loads((tmp_path / f"{n}.json").read_text()) for n in "ab")
    assert a["data_loaded"] is False and b["data_loaded"] is False
    assert a["matrices"] == b["matrices"] and a["intruders"]["counts_per_matrix"] == b["intruders"]["counts_per_matrix"]
    # the same numbers as a load with the data (the Python API loads it by default)
    from genbound import checkpoint
    from genbound.spectra import checkpoint_spectrum

    csv.write_text("text,label\n" + "".join(f"{w} {w} x{i},{w}\n" for i in range(20) for w in ["aa", "bb", "cc"]))
    full = checkpoint_spectrum(checkpoint.load(ck), intruders=True)
    assert [m["singular_values"] for m in full["matrices"]] == [m["singular_values"] for m in b["matrices"]]
    csv.unlink()
    capsys.readouterr()
    assert main(["compute", "--ckpt", str(ck)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "t.csv" in err[0]
    adapter = ck / "adapter.safetensors"
    adapter.write_bytes(adapter.read_bytes()[:-1] + b" ")
    assert main(["spectrum", "--ckpt", str(ck)]) == 2
    assert "sha256" in capsys.readouterr().err
