"""Loss landscapes: batched grid evaluation against a point-by-point loop, directions, sharpness, errors."""

import copy
import dataclasses
import itertools
import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from genbound import checkpoint
from genbound.build import adapter_state
from genbound.data import Split
from genbound.errors import GenboundError
from genbound.landscape import (LandscapeOptions, build_space, eval_subset, evaluate_points, evaluate_points_loop,
                                filter_normalized, grid_axis, landscape_analysis, landscape_arrays, pca_directions,
                                random_directions, read_trajectory, render, sharpness, snapshot_coords,
                                trajectory_directions, zero_rows)
from genbound.layers import next_link
from genbound.train import TrainConfig, train

MLP = dict(model="mlp", data="digits", hidden=[16, 12], rank=2, alpha=4, steps=30, eval_samples=20, lr=2e-2)
SMALL = dict(grid=5, samples=60, chunk=7, batch_size=16)  # 7 does not divide 26 points; 16 does not divide 60
TINY = dict(grid=3, samples=40, chunk=4, batch_size=16)  # tiny-bert: fewer points (a CPU forward costs more)


def small(name):
    return TINY if name == "bert" else SMALL


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("landscape")
    train(TrainConfig(**MLP, method="lora"), root / "lora", progress=False)
    for chain_method in ("c3la", "cola", "rac"):  # selector, dense trained A, dense frozen A
        train(TrainConfig(**MLP, method=chain_method, chain=3), root / chain_method, progress=False)
    train(TrainConfig(**MLP, method="paca"), root / "paca", progress=False)  # trains W's own columns
    csv = root / "t.csv"
    words = ["good", "fine", "bad", "poor"]
    rows = [f"the {' very' * (i % 4)} {a} movie {b} x{i},{int(words.index(a) < 2)}"
            for i, (a, b) in enumerate(itertools.product(words, words * 4))]
    csv.write_text("text,label\n" + "\n".join(rows) + "\n")
    train(TrainConfig(model="tiny-bert", data=str(csv), method="lora", rank=2, alpha=4, steps=8, lr=2e-2,
                      eval_samples=10, max_length=32), root / "bert", progress=False)
    return root


@pytest.fixture(scope="module")
def loaded(ckpts):
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = checkpoint.load(ckpts / name)
        return cache[name]
    return get


def subset_loss(ld, opts, model=None):
    """The checkpoint's own forward (the original model, its own attention; or ``model``) on the subset's raw
    examples."""
    model = ld.model if model is None else model
    idx = eval_subset(ld, opts.split, opts.samples, opts.seed).indices
    assert len(idx) == len(set(idx)) == min(opts.samples, len(getattr(ld.task, opts.split)))
    split = getattr(ld.task, opts.split)
    x = [split.x[i] for i in idx] if isinstance(split.x, list) else split.x[idx]
    enc = ld.built.backbone.encode(Split(x, split.y[idx]))
    with torch.no_grad():
        logits = model(**enc)
    logits = (logits if isinstance(logits, torch.Tensor) else logits.logits).double()
    return float(F.cross_entropy(logits, split.y[idx])), float((logits.argmax(-1) == split.y[idx]).double().mean())


@pytest.mark.parametrize("name,space", [("lora", "trainable"), ("lora", "delta"), ("lora", "all"),
                                        ("c3la", "delta"), ("bert", "trainable"), ("bert", "delta")])
def test_centre_equals_the_checkpoint_loss(loaded, name, space):
    ld = loaded(name)
    opts = LandscapeOptions(space=space, **small(name))
    r = landscape_analysis(ld, opts)
    loss, acc = subset_loss(ld, opts)
    mid = opts.grid // 2
    assert r["coords"]["a"][mid] == 0.0 and r["coords"]["b"][mid] == 0.0
    assert r["center_loss"] == pytest.approx(loss, abs=1e-6)
    assert r["losses"][mid][mid] == pytest.approx(loss, abs=1e-6)
    assert r["center_acc"] == pytest.approx(acc) and r["accuracies"][mid][mid] == pytest.approx(acc)
    assert np.ptp(np.array(r["losses"])) > 1e-3  # the surface is not flat: the directions move the model
    assert r["samples"] == min(opts.samples, len(ld.task.train)) and r["split"] == "train" and r["seed"] == 0


@pytest.mark.parametrize("name", ["lora", "bert"])
def test_an_off_centre_point_equals_a_moved_copy_of_the_model(loaded, name):
    """Independent of the grid code: theta* + a d1 + b d2 written into a deep copy of the checkpoint's model
    (its own forward and attention), at the grid's corner a = -1, b = +1."""
    ld = loaded(name)
    opts = LandscapeOptions(space="trainable", **small(name))
    r = landscape_analysis(ld, opts)
    d1, d2 = random_directions(build_space(ld, "trainable").coords, opts.seed, 2, opts.include_1d)
    moved = copy.deepcopy(ld.model)
    with torch.no_grad():
        for n in d1:
            moved.get_parameter(n).add_(-1.0 * d1[n] + 1.0 * d2[n])
    loss, acc = subset_loss(ld, opts, moved)
    assert r["coords"]["a"][0] == -1.0 and r["coords"]["b"][-1] == 1.0
    assert r["losses"][-1][0] == pytest.approx(loss, abs=1e-6)  # rows follow b, columns a
    assert r["accuracies"][-1][0] == pytest.approx(acc)
    assert abs(loss - r["center_loss"]) > 1e-4  # the corner is not the centre (100x the tolerance)


CASES = [("lora", "trainable", "random"), ("lora", "delta", "random"), ("lora", "trainable", "pca"),
         ("lora", "delta", "pca"), ("lora", "all", "random"), ("c3la", "trainable", "pca"), ("c3la", "delta", "pca"),
         ("paca", "delta", "pca"),
         ("bert", "trainable", "random"), ("bert", "delta", "random"), ("bert", "trainable", "pca"),
         ("bert", "delta", "pca")]


@pytest.mark.parametrize("name,space,dirs", CASES)
def test_batched_equals_the_point_by_point_loop(ckpts, loaded, name, space, dirs):
    ld = loaded(name)
    opts = LandscapeOptions(space=space, dirs=dirs, **small(name))
    sp = build_space(ld, space, opts.attention)
    if dirs == "random":
        d = random_directions(sp.coords, opts.seed, 2, opts.include_1d)
    else:
        d = trajectory_directions(sp, ld, read_trajectory(ckpts / name), name)[0]
    data = eval_subset(ld, opts.split, opts.samples, opts.seed)
    a = grid_axis(opts.grid, 1.0)
    pts = torch.tensor([[x, y] for y in a for x in a] + [[0.3, -0.7]])
    fast, fast_acc, info = evaluate_points(sp, d, pts, data, opts.chunk, opts.batch_size)
    slow, slow_acc = evaluate_points_loop(sp, d, pts, data, opts.batch_size)
    assert info["path"] == "vmap" and info["vmap_fallback_ops"] == []
    assert np.ptp(slow) > 1e-3
    np.testing.assert_allclose(fast, slow, rtol=0, atol=1e-6)
    np.testing.assert_allclose(fast_acc, slow_acc, rtol=0, atol=1e-12)
    r = landscape_analysis(ld, opts, ckpts / name)  # the analysis evaluates the same grid
    np.testing.assert_allclose(np.array(r["losses"]).ravel(), slow[:-1], rtol=0, atol=1e-6)


def test_fallback_when_vmap_refuses_gives_the_same_values(loaded, monkeypatch):
    import genbound.landscape as landscape

    ld = loaded("bert")
    sp = build_space(ld, "trainable")
    d = random_directions(sp.coords, 0, 2, False)
    data = eval_subset(ld, "train", 40, 0)
    pts = torch.tensor([[x, y] for y in grid_axis(3, 1.0) for x in grid_axis(3, 1.0)])
    slow, _ = evaluate_points_loop(sp, d, pts, data, 16)

    def refuse(*args, **kwargs):
        raise RuntimeError("vmap: no batching rule for aten::something\nmore")
    monkeypatch.setattr(landscape, "vmap", refuse)
    fast, _, info = evaluate_points(sp, d, pts, data, 4, 16)
    assert info["path"] == "loop of functional_call (vmap failed: vmap: no batching rule for aten::something)"
    np.testing.assert_allclose(fast, slow, rtol=0, atol=1e-6)


def test_the_checkpoint_is_left_untouched(loaded):
    ld = loaded("bert")
    before = {k: v.clone() for k, v in adapter_state(ld.model).items()}
    params = {n: p.clone() for n, p in ld.model.named_parameters()}
    sp = build_space(ld, "delta")
    d = random_directions(sp.coords, 0, 2, False)
    data = eval_subset(ld, "train", 20, 0)
    evaluate_points_loop(sp, d, torch.tensor([[0.5, 0.5]]), data, 8)
    landscape_analysis(ld, LandscapeOptions(grid=3, samples=20, space="delta"))
    assert ld.model.config._attn_implementation == "sdpa" and not ld.model.training
    assert all(torch.equal(v, adapter_state(ld.model)[k]) for k, v in before.items())
    assert all(torch.equal(p, dict(ld.model.named_parameters())[n]) for n, p in params.items())


def test_the_evaluation_subset_is_seeded_and_stated(loaded):
    ld = loaded("bert")
    a, b, c = (eval_subset(ld, "train", 20, s) for s in (0, 0, 1))
    assert a.indices == b.indices != c.indices and torch.equal(a.y, b.y)
    lengths = a.inputs["attention_mask"].sum(1)
    assert bool((lengths[1:] >= lengths[:-1]).all())  # ordered by length: batches pad little
    assert torch.equal(a.y.cpu(), ld.task.train.y[a.indices])
    assert len(eval_subset(ld, "test", 10**6, 0).indices) == len(ld.task.test)


def test_one_d_slice_is_the_middle_row_of_the_plane(loaded):
    ld = loaded("lora")
    two = landscape_analysis(ld, LandscapeOptions(**SMALL))
    one = landscape_analysis(ld, LandscapeOptions(**SMALL, one_d=True))
    assert np.array(one["losses"]).shape == (SMALL["grid"],) and one["coords"]["b"] == []
    np.testing.assert_allclose(one["losses"], two["losses"][SMALL["grid"] // 2], rtol=0, atol=1e-6)


# ---- directions -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("space", ["trainable", "delta", "all"])
def test_filter_normalization_matches_row_norms(loaded, space):
    coords = build_space(loaded("bert"), space).coords
    for include_1d in (False, True):
        for d in random_directions(coords, 3, 2, include_1d):
            seen_1d = False
            for n, w in coords.items():
                if w.dim() <= 1:
                    seen_1d = True
                    want = w.norm() if include_1d else torch.tensor(0.0)
                    assert float(d[n].norm()) == pytest.approx(float(want), rel=1e-5), n
                    assert include_1d or not d[n].any()
                else:
                    rows = w.reshape(w.shape[0], -1).norm(dim=1)
                    np.testing.assert_allclose(d[n].reshape(w.shape[0], -1).norm(dim=1), rows, rtol=1e-5, atol=0)
                    assert abs(F.cosine_similarity(d[n].flatten(), w.flatten(), 0)) < 0.9  # not w itself
            assert seen_1d  # the head's bias at least


def test_zero_rows_stay_zero_and_are_counted():
    w = torch.randn(4, 6)
    w[1] = 0
    d = filter_normalized(w, torch.randn(4, 6), include_1d=False)
    assert not d[1].any() and d[0].norm() == pytest.approx(float(w[0].norm()), rel=1e-6)
    coords = {"w": w, "b": torch.zeros(5), "c": torch.ones(3)}
    assert zero_rows(coords, False) == (1, 4)
    assert zero_rows(coords, True) == (2, 6)
    assert not filter_normalized(coords["b"], torch.randn(5), True).any()


def test_same_seed_same_directions_other_seed_different(loaded):
    coords = build_space(loaded("lora"), "trainable").coords
    a, b, c = (random_directions(coords, s, 2, False) for s in (5, 5, 6))
    moved = [n for n in coords if coords[n].dim() > 1]
    assert all(torch.equal(a[i][n], b[i][n]) for i in range(2) for n in coords)
    assert all(not torch.allclose(a[i][n], c[i][n]) for i in range(2) for n in moved)
    assert all(not torch.allclose(a[0][n], a[1][n]) for n in moved)  # d1 and d2 differ
    reordered = dict(reversed(list(coords.items())))  # per-tensor generators: the order does not matter
    assert all(torch.equal(a[0][n], random_directions(reordered, 5, 1, False)[0][n]) for n in coords)


def planted(shapes, T=12, noise=1e-7, seed=0):
    g = torch.Generator().manual_seed(seed)
    D = sum(int(np.prod(s)) for s in shapes.values())
    q = torch.linalg.qr(torch.randn(D, 2, generator=g, dtype=torch.float64))[0]
    coef = torch.stack([torch.linspace(-3, 0, T, dtype=torch.float64) * 2.0,
                        torch.sin(torch.linspace(0, 3, T, dtype=torch.float64))], 1)
    flat = coef @ q.T + noise * torch.randn(T, D, generator=g, dtype=torch.float64)
    diffs = []
    for row in flat:
        parts = torch.split(row, [int(np.prod(s)) for s in shapes.values()])
        diffs.append({n: p.reshape(s) for (n, s), p in zip(shapes.items(), parts)})
    return diffs, q, coef


def test_pca_directions_are_orthonormal_and_recover_a_planted_plane():
    diffs, q, _ = planted({"w": (30, 20), "b": (50,), "z": (3, 3)})
    u, ratios, names = pca_directions(diffs)
    U = torch.stack(u, 1)
    assert names == ["w", "b", "z"]
    assert torch.allclose(U.T @ U, torch.eye(2, dtype=U.dtype), atol=1e-10)
    assert torch.linalg.svdvals(U.T @ q).min() > 1 - 1e-9  # principal angles ~ 0: the same plane
    assert ratios[0] > ratios[1] > 0 and sum(ratios) == pytest.approx(1, abs=1e-9)
    with pytest.raises(GenboundError, match="fewer than 2 dimensions"):
        pca_directions([{"w": torch.ones(3) * t} for t in range(4)])


def test_pca_through_the_checkpoint_recovers_planted_snapshots(ckpts, loaded, tmp_path, reseal):
    """Snapshots theta_t = theta* + a_t u + b_t v + noise written into a copy of a checkpoint."""
    ck = tmp_path / "planted"
    shutil.copytree(ckpts / "lora", ck)
    shutil.rmtree(ck / "trajectory")
    ld = loaded("lora")
    centre = {n: p.detach() for n, p in ld.model.named_parameters() if p.requires_grad}
    diffs, q, coef = planted({n: tuple(t.shape) for n, t in centre.items()}, T=9, noise=1e-6)
    for t, diff in enumerate(diffs):
        checkpoint.save_snapshot(ck, 10 * t, 0, {n: (centre[n].double() + diff[n]).float() for n in centre})
    reseal(ck)  # planted on purpose: the manifest vouches for the new snapshots
    sp = build_space(ld, "trainable")
    dirs, ratios, traj, note = trajectory_directions(sp, ld, read_trajectory(ck), str(ck))
    D = torch.stack([torch.cat([d[n].flatten() for n in centre]).double() for d in dirs], 1)
    scale = traj["scale"]
    assert torch.allclose(D.T @ D, scale**2 * torch.eye(2, dtype=D.dtype), rtol=1e-5, atol=1e-5 * scale**2)
    assert torch.linalg.svdvals((D / scale).T @ q).min() > 1 - 1e-4
    path = np.stack([traj["a"], traj["b"]], 1) * scale  # the projected path reproduces (a_t, b_t) up to rotation
    rot, *_ = np.linalg.lstsq(coef.numpy(), path, rcond=None)
    np.testing.assert_allclose(coef.numpy() @ rot, path, atol=1e-4)
    assert max(np.abs(path).max(axis=0)) == pytest.approx(scale) and sum(ratios) > 1 - 1e-6
    r = landscape_analysis(ld, LandscapeOptions(dirs="pca", **SMALL), ck)
    assert r["trajectory"]["steps"] == [10 * t for t in range(9)] and r["explained_variance"] == ratios


def test_chain_pca_uses_the_last_link_in_factor_space_and_the_whole_path_in_delta_space(ckpts, loaded):
    ld = loaded("c3la")
    snaps = read_trajectory(ckpts / "c3la")
    assert {s.link for s in snaps} == {0, 1, 2}
    t_r = landscape_analysis(ld, LandscapeOptions(dirs="pca", **SMALL), ckpts / "c3la")["trajectory"]
    assert set(t_r["links"]) == {2} and t_r["snapshots_total"] == len(snaps) > len(t_r["steps"]) > 2
    t_d = landscape_analysis(ld, LandscapeOptions(dirs="pca", space="delta", **SMALL), ckpts / "c3la")["trajectory"]
    assert t_d["steps"] == [s.step for s in snaps]


@pytest.mark.parametrize("name", ["c3la", "cola", "rac", "paca"])
def test_snapshots_map_to_the_update_of_the_chain_at_that_step(ckpts, loaded, name):
    """Oracle: replay the chain on a fresh model (link boundaries merged with the library's own next_link),
    put the snapshot's link tensors in, and read delta_weight()."""
    ld = loaded(name)
    snaps = read_trajectory(ckpts / name)
    sp = build_space(ld, "delta")
    end_of = {s.link: s for s in snaps}  # the last snapshot of each link
    for snap in [snaps[0], snaps[5], snaps[len(snaps) // 2], snaps[-3], *end_of.values()]:
        init = checkpoint.build_from_manifest(ld.manifest, ld.task)
        for link in range(snap.link + 1):
            if link:
                next_link(init.model, link)
            src = end_of[link] if link < snap.link else snap
            with torch.no_grad():
                for n, p in init.model.named_parameters():
                    if p.requires_grad:
                        p.copy_(src.tensors[n])
        got = snapshot_coords(sp, ld, snap)
        for name, layer in init.layers.items():
            torch.testing.assert_close(got[f"{name}.weight"], layer.delta_weight(), rtol=0, atol=1e-6)
        assert torch.equal(got["head.weight"], snap.tensors["head.weight"])
    final = snapshot_coords(sp, ld, snaps[-1])  # the last snapshot is the checkpoint itself
    assert all(torch.allclose(final[n], sp.coords[n], atol=1e-7) for n in final)


# ---- sharpness, output, errors --------------------------------------------------------------------------
def test_sharpness_on_a_known_surface():
    a = grid_axis(41, 1.0)
    A, B = np.meshgrid(a, a)
    s = sharpness(a, a, 1 + A**2 + 2 * B**2, 1.0, 0.5)
    assert s["increase"] == pytest.approx(0.5) and s["max"] == pytest.approx(3.0)
    assert s["points_within_rho"] == int((np.hypot(A, B) <= 0.5 + 1e-12).sum()) and s["argmax"] in ([-1, -1], [-1, 1])
    assert grid_axis(5, 2.0) == [-2.0, -1.0, 0.0, 1.0, 2.0]


def test_result_is_json_and_arrays_fit(ckpts, loaded):
    r = landscape_analysis(loaded("lora"), LandscapeOptions(dirs="pca", **SMALL), ckpts / "lora")
    text = json.dumps(r, allow_nan=False)
    for key in ("dirs", "space", "grid", "range", "center_loss", "losses", "accuracies", "sharpness", "samples",
                "split", "seed", "explained_variance", "trajectory", "description"):
        assert key in json.loads(text), key
    assert set(r["sharpness"]) >= {"rho", "increase", "max"}
    arrays = landscape_arrays(r)
    assert arrays["losses"].shape == (5, 5) == arrays["accuracies"].shape and arrays["a"].shape == (5,)
    assert arrays["trajectory_a"].shape == arrays["trajectory_steps"].shape == (len(r["trajectory"]["steps"]),)
    assert "explained variance" in r["description"] and f"{r['samples']} train examples" in render(r)


def test_bad_input_gives_clear_errors(ckpts, loaded, tmp_path):
    ld = loaded("lora")
    bare = tmp_path / "bare"
    shutil.copytree(ckpts / "lora", bare)
    shutil.rmtree(bare / "trajectory")
    with pytest.raises(GenboundError, match=f"{bare}.*no snapshots"):
        landscape_analysis(ld, LandscapeOptions(dirs="pca", **SMALL), bare)
    with pytest.raises(GenboundError, match="no snapshots"):
        landscape_analysis(ld, LandscapeOptions(dirs="pca", **SMALL))
    for bad, words in [(dict(grid=2), "--grid 2: .*at least 3"), (dict(dirs="pcb"), "--dirs pcb"),
                       (dict(space="dw"), "--space dw"), (dict(rho=0.01), "--rho 0.01 is smaller than the grid step"),
                       (dict(samples=0), "--samples 0"), (dict(split="val"), "--split val")]:
        opts = dataclasses.replace(LandscapeOptions(**SMALL), **bad)
        with pytest.raises(GenboundError, match=words):
            landscape_analysis(ld, opts)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_batched_equals_the_loop_on_cuda(ckpts):
    for name in ("lora", "bert"):
        ld = checkpoint.load(ckpts / name, device="cuda")
        sp = build_space(ld, "trainable")
        d = random_directions(sp.coords, 0, 2, False)
        data = eval_subset(ld, "train", 60, 0)
        pts = torch.tensor([[x, y] for y in grid_axis(5, 1.0) for x in grid_axis(5, 1.0)])
        fast, _, info = evaluate_points(sp, d, pts, data, 7, 16)
        slow, _ = evaluate_points_loop(sp, d, pts, data, 16)
        assert info["path"] == "vmap"
        np.testing.assert_allclose(fast, slow, rtol=0, atol=1e-6)
