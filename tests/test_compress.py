"""Compression code (genbound.compress): lossless round trip, exact bit accounting, rate near the entropy."""

import math

import numpy as np
import pytest
import torch

from genbound import compress
from genbound.compress import decode, encode, quantize

SHAPES = {"head.weight": (7, 13), "hidden.0.lora_B": (64, 4), "hidden.1.lora_A": (4, 50), "vec": (333,)}


def random_deltas(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {name: torch.randn(shape, generator=g) * (0.1 + i) for i, (name, shape) in enumerate(SHAPES.items())}
    out["hidden.0.lora_B"][:, :2] = 0.0  # untouched columns
    return out


def entropy_bits(counts: np.ndarray) -> float:
    """sum_t n_t H(counts_t / n_t), in bits, from the symbol counts alone."""
    n = counts.sum()
    p = counts[counts > 0] / n
    return float(-(n * p * np.log2(p)).sum())


def expected_header_bits(code: compress.Code, shapes: dict) -> int:
    """The documented table, recomputed here: 1 + 4 + 32, then per tensor (step or levels) + counts."""
    total = 1 + 4 + 32
    levels = 2 ** code.header["bits"]
    for shape in shapes.values():
        n = math.prod(shape)
        if n == 0:
            continue
        total += 32 if code.header["scheme"] == "uniform" else 16 * levels
        total += levels * math.ceil(math.log2(n + 1))
    return total


@pytest.mark.parametrize("scheme", ["uniform", "kmeans"])
@pytest.mark.parametrize("bits", range(1, 9))
def test_round_trip_is_bitwise_and_bits_are_all_counted(scheme, bits):
    deltas = random_deltas(bits)
    code = encode(deltas, bits, scheme)
    shapes = {k: tuple(v.shape) for k, v in deltas.items()}
    out = decode(code, shapes)
    assert sorted(out) == sorted(deltas)
    for name, q in code.quantized.items():
        assert q.dtype == torch.float32 and q.shape == deltas[name].shape
        assert torch.equal(out[name].view(torch.int32), q.view(torch.int32))
        levels = code.header["tensors"][name]["levels"].astype(np.float32)
        assert len(levels) == 2**bits
        assert np.isin(q.numpy(), levels).all()
    assert code.words.dtype == np.uint32 and code.header["n_words"] == len(code.words)
    assert code.header_bits == expected_header_bits(code, shapes)
    assert code.payload_bits == 32 * len(code.words)
    assert code.bits == code.header_bits + code.payload_bits
    assert sum(t["header_bits"] for t in code.per_tensor.values()) == code.header_bits - 37


def test_decode_reads_only_the_header_and_the_words():
    code = encode(random_deltas(0), 4, "kmeans")
    stripped = compress.Code(0, 0, 0, code.words.copy(), {
        "scheme": code.header["scheme"], "bits": code.header["bits"], "n_words": code.header["n_words"],
        "tensors": {k: {"levels": v["levels"], "counts": v["counts"]} for k, v in code.header["tensors"].items()},
    }, {}, {})
    out = decode(stripped, SHAPES)
    assert all(torch.equal(out[k], code.quantized[k]) for k in SHAPES)
    uniform = encode(random_deltas(0), 4, "uniform")
    tensors = {k: {"step": v["step"], "counts": v["counts"]} for k, v in uniform.header["tensors"].items()}
    stripped = compress.Code(0, 0, 0, uniform.words, {**uniform.header, "tensors": tensors}, {}, {})
    out = decode(stripped, SHAPES)
    assert all(torch.equal(out[k], uniform.quantized[k]) for k in SHAPES)


@pytest.mark.parametrize("bits", [1, 2, 3, 5, 8])
def test_uniform_grid_contains_zero_and_error_is_half_a_step(bits):
    x = torch.randn(5000, generator=torch.Generator().manual_seed(bits)) * 3 + 0.5
    x[:100] = 0.0
    levels, symbols = quantize(x, bits, "uniform")
    assert levels.dtype == np.float32 and 0.0 in levels
    step = float(levels[2 ** (bits - 1)])
    np.testing.assert_array_equal(levels, step * (np.arange(2**bits) - (2 ** (bits - 1) - 1)).astype(np.float32))
    err = np.abs(levels[symbols] - x.numpy())
    inside = (x.numpy() >= levels.min()) & (x.numpy() <= levels.max())
    assert err[inside].max() <= abs(step) / 2 * (1 + 1e-6) + 1e-7
    assert (levels[symbols][:100] == 0).all()
    if bits >= 2:
        assert inside.all()


@pytest.mark.parametrize("scheme", ["uniform", "kmeans"])
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_payload_is_close_to_the_entropy_and_never_below(scheme, bits):
    g = torch.Generator().manual_seed(bits)
    deltas = {"a": torch.randn(20_000, generator=g), "b": torch.randn(30, 40, generator=g) ** 3}
    code = encode(deltas, bits, scheme)
    h = sum(entropy_bits(np.bincount(quantize(x, bits, scheme)[1], minlength=2**bits)) for x in deltas.values())
    assert h == pytest.approx(sum(t["payload_estimate_bits"] for t in code.per_tensor.values()), rel=1e-9)
    assert h - 1 <= code.payload_bits <= h * 1.01 + 64


def test_all_zero_tensor_costs_only_its_header():
    code = encode({"z": torch.zeros(100, 10)}, 4)
    assert code.payload_bits == 0 and len(code.words) == 0
    assert code.bits == 37 + 32 + 16 * math.ceil(math.log2(1001))
    assert torch.equal(decode(code, {"z": (100, 10)})["z"], torch.zeros(100, 10))
    for scheme in ("uniform", "kmeans"):  # single-symbol tensor among others: skipped by the coder
        mixed = encode({"a": torch.randn(50), "z": torch.zeros(3, 3), "e": torch.zeros(0, 4)}, 3, scheme)
        assert mixed.per_tensor["z"]["distinct_symbols"] == 1 and mixed.per_tensor["e"]["header_bits"] == 0


def test_empty_dict_is_the_global_header():
    code = encode({}, 3, "kmeans")
    assert code.bits == 37 and code.payload_bits == 0 and decode(code, {}) == {}


@pytest.mark.parametrize("scheme", ["uniform", "kmeans"])
def test_sparse_delta_is_cheaper_than_dense(scheme):
    g = torch.Generator().manual_seed(0)
    dense = torch.randn(200, 100, generator=g)
    sparse = dense * (torch.rand(200, 100, generator=g) < 0.1)
    assert encode({"w": sparse}, 4, scheme).bits < 0.5 * encode({"w": dense}, 4, scheme).bits


@pytest.mark.parametrize("bits", [1, 2, 3, 4])
def test_kmeans_beats_uniform_on_a_gaussian_mixture(bits):
    g = torch.Generator().manual_seed(1)
    x = torch.cat([torch.randn(6000, generator=g) * 0.05 - 1.0, torch.randn(3000, generator=g) * 0.2 + 0.7,
                   torch.randn(1000, generator=g) * 0.01 + 3.0])
    mse = {s: float(((encode({"x": x}, bits, s).quantized["x"] - x) ** 2).mean()) for s in ("uniform", "kmeans")}
    assert mse["kmeans"] < mse["uniform"]


def test_kmeans_levels_are_float16_and_keep_exact_zeros():
    x = torch.randn(1000, generator=torch.Generator().manual_seed(2))
    x[::3] = 0.0
    levels, symbols = quantize(x, 3, "kmeans")
    assert levels.dtype == np.float16 and 0.0 in levels
    assert (levels[symbols][::3] == 0).all()
    few = torch.tensor([0.5, -0.25, 0.5, 2.0])  # fewer distinct values than levels: reproduced exactly
    levels, symbols = quantize(few, 4, "kmeans")
    assert np.array_equal(levels[symbols].astype(np.float32), few.numpy())


def test_a_million_numbers_are_fast():
    import time

    x = {"w": torch.randn(1000, 1000, generator=torch.Generator().manual_seed(3))}
    start = time.perf_counter()
    for scheme in ("uniform", "kmeans"):
        decode(encode(x, 8, scheme), {"w": (1000, 1000)})
    assert time.perf_counter() - start < 10


@pytest.mark.parametrize(
    "deltas, bits, scheme, match",
    [
        ({"w": torch.ones(3)}, 0, "uniform", "bits"),
        ({"w": torch.ones(3)}, 17, "uniform", "bits"),
        ({"w": torch.ones(3)}, 2.0, "uniform", "bits"),
        ({"w": torch.ones(3)}, 2, "huffman", "scheme"),
        ({"ok": torch.ones(3), "bad.lora_B": torch.tensor([1.0, float("nan")])}, 2, "uniform", "bad.lora_B"),
        ({"inf": torch.tensor([float("inf")])}, 2, "kmeans", "'inf'"),
        ({"big": torch.tensor([1e6, -1e6, 0.0, 1.0, 2.0])}, 2, "kmeans", "'big'.*float16"),
    ],
)
def test_bad_inputs_raise_value_error(deltas, bits, scheme, match):
    with pytest.raises(ValueError, match=match):
        encode(deltas, bits, scheme)


def test_decode_refuses_a_header_that_does_not_fit_the_shapes():
    code = encode({"w": torch.randn(10)}, 2)
    with pytest.raises(ValueError, match="'w'"):
        decode(code, {"w": (11,)})
    with pytest.raises(ValueError, match="'v'"):
        decode(code, {"v": (10,), "w": (10,)})


@pytest.mark.parametrize("bits", [1, 2, 3, 4])
@pytest.mark.parametrize("kind", ["normal", "positive", "negative", "zeros", "one value", "empty"])
def test_qat_quantizer_on_the_device_equals_quantize(bits, kind):
    """occam.quantized_like (torch, used at every QAT step) = levels[symbols] of compress.quantize (numpy)."""
    from genbound.occam import kmeans_levels, quantized_like

    g = torch.Generator().manual_seed(bits)
    x = {"normal": torch.randn(4000, generator=g) * 1e-2, "positive": torch.rand(4000, generator=g),
         "negative": -torch.rand(4000, generator=g) * 3, "zeros": torch.zeros(500),
         "one value": torch.full((300,), 0.37), "empty": torch.zeros(0)}[kind].reshape(-1, 20)
    for scheme in ("uniform", "kmeans"):
        levels, symbols = quantize(x, bits, scheme)
        want = torch.as_tensor(levels[symbols].astype("float32")).reshape(x.shape)
        got = quantized_like(x, bits, scheme, kmeans_levels(x, bits) if scheme == "kmeans" and x.numel() else None)
        assert torch.equal(got, want), (scheme, float((got - want).abs().max()))
