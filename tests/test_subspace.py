"""Subspace training (docs/theory.md section 5e): the projection against a dense float64 oracle, the chain rule
dL/dz = P^T dL/dtheta, training with --subspace on every kind of method (adapters, chains, full, head), the
checkpoint's z, and the compression bound that codes z."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from genbound import bounds, checkpoint
from genbound.build import adapter_state, build
from genbound.cli import main
from genbound.compress import encode
from genbound.compute import ComputeOptions, compute
from genbound.config import TrainConfig, model_ref
from genbound.data import load_task
from genbound.layers import use_fused
from genbound.runtime import logits_with
from genbound.subspace import NNZ, SparseProjection, Subspace, count, trained
from genbound.train import train

TINY = dict(model="mlp", data="digits", hidden=[24, 16], rank=4, alpha=8, eval_samples=50, steps=30, lr=3e-2)
RUNS = {"lora": (1, 40), "c3la": (3, 30), "cola": (2, 40), "full": (1, 60), "head": (1, 30), "dora": (1, 40)}


def dense_oracle(proj: SparseProjection) -> torch.Tensor:
    """P in float64 from its tables, entry by entry (no use of apply or transpose)."""
    P = torch.zeros(proj.numbers, proj.dim, dtype=torch.float64)
    for j in range(NNZ):
        for i in range(proj.numbers):
            P[i, int(proj.cols[j, i])] += (-1.0 if bool(proj.neg[j, i]) else 1.0) / NNZ ** 0.5
    return P


@pytest.mark.parametrize("numbers,dim", [(37, 11), (50, 1), (9, 40), (300, 64)])
def test_projection_and_its_transpose_equal_the_dense_matrix(numbers, dim):
    proj = SparseProjection(numbers, dim, seed=3)
    P = dense_oracle(proj)
    torch.testing.assert_close(proj.dense(), P, rtol=0, atol=1e-15)  # column by column, P e_j
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        z = torch.randn(dim, generator=g, dtype=torch.float64)
        v = torch.randn(numbers, generator=g, dtype=torch.float64)
        torch.testing.assert_close(proj.apply(z), P @ z, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(proj.transpose(v), P.t() @ v, rtol=1e-12, atol=1e-12)
    # every row holds NNZ entries of +-1/sqrt(NNZ) (repeated columns add up): its squared entries sum to 1
    # unless columns repeat; never a dense row
    assert int((P != 0).sum(1).max()) <= NNZ
    if dim >= 64:
        assert abs(float((P ** 2).sum(1).mean()) - 1.0) < 0.15


def test_projection_is_seeded():
    a, b = SparseProjection(200, 30, seed=5), SparseProjection(200, 30, seed=5)
    assert torch.equal(a.cols, b.cols) and torch.equal(a.neg, b.neg)
    for other in (SparseProjection(200, 30, seed=6), SparseProjection(200, 30, seed=5, projection_seed=1)):
        assert not torch.equal(dense_oracle(a), dense_oracle(other))


def tiny_built(method="lora", k=1, seed=0):
    cfg = TrainConfig(**{**TINY, "method": method, "chain": k, "seed": seed})
    task = load_task(cfg.data, seed=seed)
    return build(model_ref(cfg), task, method, cfg.rank, cfg.alpha, k, seed), task


@pytest.mark.parametrize("method", ["lora", "cla", "full", "head", "vera"])
def test_gradient_wrt_z_is_p_transpose_times_gradient_wrt_theta(method, one_thread):
    built, task = tiny_built(method)
    model = built.model
    sub = Subspace(model, 17, seed=0)
    x, y = task.train.x[:64], task.train.y[:64]
    P = dense_oracle(sub.proj).float()
    z = torch.randn(17, generator=torch.Generator().manual_seed(2)) * 0.1
    with torch.no_grad():
        sub.z.copy_(z)
    sub.push()
    # oracle: autograd through theta_0 + P z with the dense P, the model's tensors replaced functionally
    zz = z.clone().requires_grad_(True)
    flat = sub.theta0 + P @ zz
    values, at = {}, 0
    for name, p in trained(model):
        values[name] = flat[at:at + p.numel()].view_as(p)
        at += p.numel()
    torch.nn.functional.cross_entropy(logits_with(model, values, {"x": x}), y).backward()
    for fused in (False, True):
        with use_fused(model, fused):
            torch.nn.functional.cross_entropy(model(x), y).backward()
        g_theta = torch.cat([p.grad.reshape(-1) for _, p in trained(model)]).double()
        sub.pull_grad()
        assert all(p.grad is None for _, p in trained(model))
        torch.testing.assert_close(sub.z.grad.double(), dense_oracle(sub.proj).t() @ g_theta, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(sub.z.grad, zz.grad, rtol=1e-4, atol=1e-6)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory, one_thread):
    root = tmp_path_factory.mktemp("sub")
    for method, (k, dim) in RUNS.items():
        train(TrainConfig(**TINY, method=method, chain=k, subspace=dim), root / method, progress=False)
    return root


def frozen_and_trained(model):
    return ({n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad},
            [n for n, p in model.named_parameters() if p.requires_grad])


@pytest.mark.parametrize("method", ["lora", "full", "head", "dora"])
def test_trained_tensors_are_theta0_plus_p_z_after_reload(ckpts, method):
    k, dim = RUNS[method]
    loaded = checkpoint.load(ckpts / method)  # load itself rebuilds them from z and compares bit for bit
    man = loaded.manifest
    assert man["params"]["subspace"] == dim and man["subspace"]["dim"] == dim and man["subspace"]["links"] == 1
    z = load_file(str(ckpts / method / "subspace.safetensors"))["z"]
    assert z.shape == (1, dim) and bool(z.abs().sum() > 0)
    init = loaded.initial()
    frozen0, names = frozen_and_trained(init.model)
    assert man["subspace"]["tensors"] == names and man["subspace"]["numbers"] == count(init.model)
    # independent oracle: theta_0 from the step-0 model, P dense in float64
    theta0 = torch.cat([p.detach().double().reshape(-1) for _, p in trained(init.model)])
    P = dense_oracle(SparseProjection(count(init.model), dim, seed=0))
    theta = torch.cat([p.detach().double().reshape(-1) for _, p in trained(loaded.model)])
    torch.testing.assert_close(theta, theta0 + P @ z[0].double(), rtol=1e-6, atol=1e-6)
    for name, t in frozen_and_trained(loaded.model)[0].items():  # frozen tensors did not move
        assert torch.equal(t, frozen0[name]), name


def test_a_chain_keeps_one_z_per_link_and_merges_each_link(ckpts):
    k, dim = RUNS["c3la"]
    loaded = checkpoint.load(ckpts / "c3la")
    man = loaded.manifest
    assert man["params"]["subspace"] == k * dim and man["subspace"]["links"] == k
    z = load_file(str(ckpts / "c3la" / "subspace.safetensors"))["z"].double()
    init = loaded.initial()
    P = dense_oracle(SparseProjection(count(init.model), dim, seed=0))
    names = [n for n, _ in trained(init.model)]
    sizes = [p.numel() for _, p in trained(init.model)]
    slices = dict(zip(names, torch.split(torch.arange(sum(sizes)), sizes)))
    for layer in ("hidden.0", "hidden.1"):
        mod = loaded.model.get_submodule(layer)
        n, r = mod.out_features, mod.r
        assert mod.frozen_B.shape == (n, (k - 1) * r) and mod.frozen_idx.shape == ((k - 1) * r,)
        for t in range(k):  # link t's B started at 0: it is exactly P z_t (its rows of P)
            b = (P[slices[f"{layer}.lora_B"]] @ z[t]).view(n, r)
            got = mod.frozen_B[:, t * r:(t + 1) * r] if t < k - 1 else mod.lora_B
            torch.testing.assert_close(got.double(), b, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(mod.weight, init.model.get_submodule(layer).weight, rtol=0, atol=0)
    head = init.model.head.weight.double().reshape(-1) + P[slices["head.weight"]] @ z.sum(0)  # the head runs on
    torch.testing.assert_close(loaded.model.head.weight.double().reshape(-1), head, rtol=1e-5, atol=1e-6)


def test_fused_and_reference_paths_train_the_same_z(tmp_path, one_thread):
    zs = {}
    for fused in (True, False):
        train(TrainConfig(**TINY, method="c3la", chain=2, subspace=25, fused=fused), tmp_path / str(fused),
              progress=False)
        zs[fused] = load_file(str(tmp_path / str(fused) / "subspace.safetensors"))["z"]
    torch.testing.assert_close(zs[True], zs[False], rtol=1e-3, atol=1e-5)


def test_an_edited_z_or_tensor_is_refused(ckpts, tmp_path, reseal):
    import shutil

    ck = tmp_path / "ck"
    shutil.copytree(ckpts / "lora", ck)
    z = load_file(str(ck / "subspace.safetensors"))["z"]
    save_file({"z": z + 1e-3}, str(ck / "subspace.safetensors"))
    with pytest.raises(checkpoint.CheckpointError, match="sha256"):
        checkpoint.load(ck)
    reseal(ck)
    with pytest.raises(checkpoint.CheckpointError, match="not theta_0 \\+ P z"):
        checkpoint.load(ck)


def test_resume_gives_the_same_bits(tmp_path, interrupt_training, one_thread):
    cfg = TrainConfig(**{**TINY, "steps": 24, "save_every": 4}, method="c3la", chain=3, subspace=30)
    train(cfg, tmp_path / "whole", progress=False)
    undo = interrupt_training(14)  # link 1 (boundaries at 8 and 16), after a saved state at step 12
    with pytest.raises(Exception, match="interrupted"):
        train(cfg, tmp_path / "cut", progress=False)
    undo()
    train(None, tmp_path / "cut", resume=True, progress=False)
    for f in ("adapter.safetensors", "subspace.safetensors"):
        a, b = load_file(str(tmp_path / "whole" / f)), load_file(str(tmp_path / "cut" / f))
        assert all(torch.equal(a[key], b[key]) for key in a), f


def test_bad_dimensions_are_refused_in_one_line(tmp_path, capsys):
    base = ["train", "--model", "mlp", "--data", "digits", "--hidden", "8", "--steps", "2", "--rank", "2", "--quiet"]
    for value, words in (("0", "integer >= 1"), ("-3", "integer >= 1"), ("100000", "larger than the")):
        out = tmp_path / f"d{value}"
        assert main([*base, "--subspace", value, "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "--subspace" in err[0] and words in err[0], err
        assert not (out / "genbound.json").exists()
    assert main([*base, "--method", "lora_plus", "--subspace", "8", "--out", str(tmp_path / "lp")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "lora_plus" in err[0] and "--method lora" in err[0], err
    with pytest.raises(SystemExit) as stop:  # argparse: not an integer
        main([*base, "--subspace", "x", "--out", str(tmp_path / "x")])
    assert stop.value.code == 2


def test_compression_codes_z_and_uses_the_quantized_models_error(ckpts):
    loaded = checkpoint.load(ckpts / "lora")
    k, dim = RUNS["lora"]
    r = compute(loaded, ComputeOptions(compress=True, compress_bits=[2, 3], schemes=["uniform"], base_gap=False,
                                       projection_seeds=4))
    c = r["compress"]
    assert c["numbers"] == dim and c["coded"] == "subspace" and r["params_subspace"] == dim
    assert c["extra_bits"] == 32 + 2  # the run seed and log2(4 projection seeds tried)
    assert c["code_bits"] == c["payload_bits"] + c["header_bits"] + c["extra_bits"]
    assert c["header_bits"] == 37 + 32 + 2 ** c["bits"] * dim.bit_length()  # one tensor: z
    assert c["occam_bound"] == pytest.approx(bounds.occam_bound(c["train_err_q"], r["n_train"], c["code_bits"]))
    # the quantized model, rebuilt here from the code with the dense P on the step-0 model, has the reported error
    z = load_file(str(ckpts / "lora" / "subspace.safetensors"))["z"]
    q = encode({"subspace.z.0": z[0]}, c["bits"], c["scheme"]).quantized["subspace.z.0"].double()
    init = checkpoint.build_from_manifest(loaded.manifest, loaded.task).model.eval()
    P = dense_oracle(SparseProjection(count(init), dim, seed=0))
    theta = torch.cat([p.detach().double().reshape(-1) for _, p in trained(init)]) + P @ q
    with torch.no_grad():
        at = 0
        for _, p in trained(init):
            p.copy_(theta[at:at + p.numel()].view_as(p))
            at += p.numel()
        err = (init(loaded.task.train.x).argmax(-1) != loaded.task.train.y).double().mean().item()
    assert err == pytest.approx(c["train_err_q"], abs=2 / len(loaded.task.train))  # float32 vs float64 ties
    fresh = checkpoint.load(ckpts / "lora")  # compute put the trained tensors back
    assert all(torch.equal(a, b) for a, b in zip(adapter_state(loaded.model).values(),
                                                  adapter_state(fresh.model).values()))


def test_code_length_grows_with_d_not_with_the_number_of_trained_numbers(tmp_path, one_thread):
    opts = ComputeOptions(compress=True, compress_bits=[2], schemes=["uniform"], base_gap=False)
    codes = {}
    for rank, dim in ((2, 20), (8, 20), (2, 320)):
        ck = tmp_path / f"r{rank}d{dim}"
        train(TrainConfig(**{**TINY, "rank": rank}, method="lora", subspace=dim), ck, progress=False)
        loaded = checkpoint.load(ck)
        codes[rank, dim] = (loaded.manifest["subspace"]["numbers"], compute(loaded, opts)["compress"])
    (p_small, small), (p_big, big), (_, wide) = codes[2, 20], codes[8, 20], codes[2, 320]
    assert p_big > 2 * p_small and small["numbers"] == big["numbers"] == 20 and wide["numbers"] == 320
    assert small["header_bits"] == big["header_bits"] < wide["header_bits"]
    assert max(small["code_bits"], big["code_bits"]) < wide["code_bits"]


def test_qat_on_a_chain_fine_tunes_the_last_link_and_puts_the_model_back(ckpts):
    loaded = checkpoint.load(ckpts / "c3la")
    before = {k: v.clone() for k, v in adapter_state(loaded.model).items()}
    r = compute(loaded, ComputeOptions(compress=True, compress_bits=[3], schemes=["kmeans"], qat_steps=15,
                                       base_gap=False))
    c = r["compress"]
    k, dim = RUNS["c3la"]
    assert c["numbers"] == k * dim and 0 <= c["train_err_q"] <= 1 and c["occam_bound"] >= c["train_err_q"]
    assert c["header_bits"] == 37 + k * (16 * 8 + 8 * dim.bit_length())  # one tensor per link, its own levels
    assert all(torch.equal(before[n], t) for n, t in adapter_state(loaded.model).items())


def test_cli_train_and_compute_report_the_subspace(ckpts, tmp_path, capsys):
    out = tmp_path / "c.json"
    assert main(["compute", "--ckpt", str(ckpts / "head"), "--compress", "--compress-bits", "2",
                 "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "the subspace coordinates z" in text and "D subspace 30" in text
    data = json.loads(out.read_text())
    assert data["compress"]["numbers"] == 30
    assert main(["compute", "--ckpt", str(ckpts / "head"), "--compress", "--projection-seeds", "0"]) == 2


@pytest.mark.parametrize("method", [m for m in __import__("genbound.methods", fromlist=["x"]).method_names()
                                    if m != "lora_plus"])  # refused: its B ratio has nothing to act on in a subspace
def test_every_method_trains_in_a_subspace_and_reloads_bit_for_bit(method, tmp_path, one_thread):
    from genbound.methods import get_method

    k = 2 if get_method(method).chain else 1
    man = train(TrainConfig(**{**TINY, "steps": 6}, method=method, chain=k, subspace=12), tmp_path / "ck",
                progress=False)
    assert man["params"]["subspace"] == 12 * k and man["subspace"]["links"] == k
    loaded = checkpoint.load(tmp_path / "ck")  # every stored tensor rebuilt from z, compared bit for bit
    init = loaded.initial()
    moved = [n for n, p in trained(loaded.model) if not torch.equal(p, init.model.get_parameter(n))]
    assert moved  # z moved theta
    frozen0 = frozen_and_trained(init.model)[0]  # the base's weights (a chain's frozen A is redrawn per link)
    base = {n: t for n, t in frozen_and_trained(loaded.model)[0].items() if n.rsplit(".", 1)[-1] in ("weight", "bias")}
    assert (bool(base) or method == "full") and all(torch.equal(t, frozen0[n]) for n, t in base.items())
