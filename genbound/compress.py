"""A prefix-free code for the trained numbers of a checkpoint (docs/theory.md section 5a, Occam bound).

The message codes ``deltas`` (trained value minus its decoder-known initial value, one float32 tensor per
trained tensor). The decoder knows, before training: the tensor names and shapes (the architecture), this
module (the coder, constriction 0.5.0's range coder with ``Categorical(..., perfect=False)``), and nothing
else. Each tensor is quantized to L = 2**bits levels and its symbols are range coded with the tensor's own
empirical symbol frequencies, which the header transmits (Lotfi et al. 2022: quantization + arithmetic
coding, the codebook and every table part of the message).

Message layout and cost (the header is a sequence of fixed-width fields whose widths the decoder knows
from what it has already read plus the shapes; the payload follows, its length given by the header):

    =====================================  =======================================  =====================
    field                                  when                                     bits
    =====================================  =======================================  =====================
    scheme flag (0 uniform, 1 kmeans)      once                                     1
    bits - 1  (bits in 1..16)              once                                     4
    payload length in 32-bit words         once                                     32
    step, float32 (signed)                 per tensor, uniform, n_t > 0             32
    L levels, float16 each                 per tensor, kmeans, n_t > 0              16 * L
    L symbol counts                        per tensor, n_t > 0                      L * ceil(log2(n_t+1))
    payload: range-coder words             once                                     32 * len(words)
    =====================================  =======================================  =====================

Tensors come in sorted name order; a tensor with n_t = 0 numbers costs nothing. The 5 bits of scheme and
bit width pay for choosing those two after seeing the data. ``Code.bits`` is the sum of the table; nothing
else is needed to decode. The decoder rebuilds each tensor's model as probabilities counts / n_t over the
symbols with nonzero count (the coder's alphabet is those symbols only, so unused levels take no
probability mass). A tensor with a single distinct symbol is not passed to the range coder (constriction
rejects a one-symbol Categorical) and costs 0 payload bits: its counts already say everything.
"""

from __future__ import annotations

from dataclasses import dataclass

import constriction
import numpy as np
import torch

SCHEMES = ("uniform", "kmeans")
MAX_BITS = 16
GLOBAL_HEADER_BITS = 1 + 4 + 32
KMEANS_ITERS = 1000  # Lloyd steps at most (stops earlier at a fixed point); slow to converge at L = 256
ONE_BIT_ITERS = 100  # Lloyd steps at most for the 1-bit uniform level s
FLOAT16_MAX = float(np.finfo(np.float16).max)


@dataclass
class Code:
    """One coded message. ``bits`` = ``header_bits`` + ``payload_bits`` (see the module table)."""

    bits: int
    header_bits: int
    payload_bits: int
    words: np.ndarray
    header: dict
    quantized: dict[str, torch.Tensor]
    per_tensor: dict[str, dict]


def _check_bits_scheme(bits: int, scheme: str) -> None:
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 1 <= bits <= MAX_BITS:
        raise ValueError(f"bits must be an integer in 1..{MAX_BITS}, got {bits!r}")
    if scheme not in SCHEMES:
        raise ValueError(f"unknown quantization scheme {scheme!r}; expected one of {', '.join(SCHEMES)}")


def uniform_levels(step: np.float32, n_levels: int) -> np.ndarray:
    """levels[i] = step * (i - (L/2 - 1)), i = 0..L-1, in float32: offsets -(L/2-1)..L/2, 0 included."""
    offsets = np.arange(n_levels, dtype=np.float32) - np.float32(n_levels // 2 - 1)
    return (np.float32(step) * offsets).astype(np.float32)


def _uniform(x: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Grid step * k, k = -h..h+1 (h = L/2 - 1); the sign of ``step`` puts the extra level on the side
    that needs it. bits >= 2: the grid covers [min x, max x] with the smallest |step|. bits == 1: levels
    {0, s}, s fitted by Lloyd's algorithm with 0 pinned, started at the mean of the side (positive or
    negative values) with the larger sum of |x|."""
    n_levels, h = 2**bits, 2 ** (bits - 1) - 1
    a, b = max(float(x.max()), 0.0), max(-float(x.min()), 0.0)
    if bits == 1:
        pos, neg = x[x > 0].astype(np.float64), x[x < 0].astype(np.float64)
        side = pos if pos.sum() >= -neg.sum() else neg
        s = float(side.mean()) if side.size else 0.0
        for _ in range(ONE_BIT_ITERS):
            taken = x[np.abs(x - s) < np.abs(x)] if s != 0.0 else x[:0]
            if taken.size == 0 or float(taken.mean()) == s:
                break
            s = float(taken.mean())
        step = np.float32(s)
    else:
        up, down = max(a / (h + 1), b / h), max(b / (h + 1), a / h)
        step = np.float32(up if up <= down else -down)
    levels = uniform_levels(step, n_levels)
    if step == 0:
        return levels, np.full(x.shape, h, dtype=np.int64)
    symbols = np.clip(np.rint(x.astype(np.float64) / float(step)), -h, h + 1).astype(np.int64) + h
    return levels, symbols


def _lloyd(x: np.ndarray, n_levels: int) -> np.ndarray:
    """1-D k-means: init at quantiles of the distinct values, KMEANS_ITERS Lloyd steps on the sorted data
    (prefix sums make a step O(L log n)); an empty cluster keeps its center; if x has exact zeros, the
    center nearest 0 is pinned to 0 so untouched numbers reconstruct exactly."""
    xs = np.sort(x.astype(np.float64))
    distinct = np.unique(xs)
    if distinct.size <= n_levels:
        return np.concatenate([distinct, np.full(n_levels - distinct.size, distinct[-1])])
    pin = bool((xs == 0).any())
    where = (np.arange(n_levels) + 0.5) / n_levels * (distinct.size - 1)  # quantiles of sorted data
    centers = np.interp(where, np.arange(distinct.size), distinct)
    prefix = np.concatenate([[0.0], np.cumsum(xs)])

    def pinned(c: np.ndarray) -> np.ndarray:
        if pin:
            c[np.argmin(np.abs(c))] = 0.0
        return np.sort(c)

    centers = pinned(centers)
    for _ in range(KMEANS_ITERS):
        edges = np.concatenate([[0], np.searchsorted(xs, (centers[:-1] + centers[1:]) / 2), [xs.size]])
        sizes = np.diff(edges)
        sums = prefix[edges[1:]] - prefix[edges[:-1]]
        new = pinned(np.where(sizes > 0, sums / np.maximum(sizes, 1), centers))
        if np.array_equal(new, centers):
            break
        centers = new
    return centers


def _nearest(x: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """Index of the nearest level (levels sorted ascending; ties go to the upper level)."""
    mids = (levels[:-1].astype(np.float64) + levels[1:].astype(np.float64)) / 2
    return np.searchsorted(mids, x.astype(np.float64), side="right").astype(np.int64)


def quantize(x: torch.Tensor, bits: int, scheme: str = "uniform", seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Quantize ``x`` to L = 2**bits levels: returns (levels as stored, symbols), dequantized x = levels[symbols].

    uniform: float32 levels step * (i - (L/2 - 1)) (see ``_uniform``); kmeans: Lloyd levels rounded to float16,
    symbols the nearest float16 level. ``seed`` is accepted for API stability; both schemes are deterministic
    (quantile init), so it changes nothing.
    """
    _check_bits_scheme(bits, scheme)
    flat = x.detach().to("cpu", torch.float32).reshape(-1).numpy()
    if not np.isfinite(flat).all():
        raise ValueError("cannot quantize a tensor with NaN or inf values")
    if flat.size == 0:
        return np.zeros(2**bits, np.float32 if scheme == "uniform" else np.float16), np.zeros(0, np.int64)
    if scheme == "uniform":
        return _uniform(flat, bits)
    levels = kmeans_levels(flat, bits)
    return levels, _nearest(flat, levels)


def kmeans_levels(flat: np.ndarray, bits: int) -> np.ndarray:
    """The stored k-means levels of non-empty float32 numbers: Lloyd centers rounded to float16, sorted."""
    centers = _lloyd(flat, 2**bits)
    if np.abs(centers).max() > FLOAT16_MAX:
        raise ValueError(f"kmeans levels exceed the float16 range (|level| up to {np.abs(centers).max():.3g})")
    return np.sort(centers.astype(np.float16))


def _count_bits(n: int) -> int:
    """ceil(log2(n + 1)): the width of one symbol count of a tensor with n numbers."""
    return int(n).bit_length()


def _model(counts: np.ndarray, n: int) -> tuple[np.ndarray, constriction.stream.model.Categorical | None]:
    """The symbols with nonzero count and the categorical model over them (None when fewer than two)."""
    used = np.flatnonzero(counts)
    if used.size < 2:
        return used, None
    probabilities = counts[used].astype(np.float64) / float(n)
    return used, constriction.stream.model.Categorical(probabilities, perfect=False)


def _tensor_header_bits(scheme: str, n_levels: int, n: int) -> int:
    if n == 0:
        return 0
    return (32 if scheme == "uniform" else 16 * n_levels) + n_levels * _count_bits(n)


def header_bits_of(header: dict, shapes: dict[str, tuple[int, ...]]) -> int:
    """The header's cost in bits, field by field as in the module table."""
    n_levels = 2 ** header["bits"]
    return GLOBAL_HEADER_BITS + sum(
        _tensor_header_bits(header["scheme"], n_levels, int(np.prod(shapes[name], dtype=np.int64)))
        for name in shapes
    )


def encode(deltas: dict[str, torch.Tensor], bits: int, scheme: str = "uniform") -> Code:
    """Quantize every delta to 2**bits levels and range code all of them into one stream (sorted names).

    Raises ValueError on bad bits/scheme or a non-finite delta, RuntimeError if ``decode`` does not give
    back ``quantized`` bit for bit (checked on every call).
    """
    _check_bits_scheme(bits, scheme)
    n_levels = 2**bits
    encoder = constriction.stream.queue.RangeEncoder()
    tensors: dict[str, dict] = {}
    quantized: dict[str, torch.Tensor] = {}
    per_tensor: dict[str, dict] = {}
    for name in sorted(deltas):
        x = deltas[name]
        if not torch.isfinite(x).all():
            raise ValueError(f"delta {name!r} has NaN or inf values")
        try:
            levels, symbols = quantize(x, bits, scheme)
        except ValueError as err:
            raise ValueError(f"delta {name!r}: {err}") from None
        n = int(symbols.size)
        counts = np.bincount(symbols, minlength=n_levels).astype(np.int64)
        used, model = _model(counts, n)
        if model is not None:
            lookup = np.zeros(n_levels, np.int32)
            lookup[used] = np.arange(used.size, dtype=np.int32)
            encoder.encode(lookup[symbols].astype(np.int32), model)
        entry = {"scheme": scheme, "levels": levels, "counts": counts}
        if scheme == "uniform":
            entry["step"] = np.float32(levels[n_levels // 2])  # offset +1: exactly the step
        tensors[name] = entry
        quantized[name] = torch.from_numpy(levels.astype(np.float32)[symbols]).reshape(x.shape)
        p = counts[used] / max(n, 1)
        entropy = float(-(p * np.log2(p)).sum()) if n else 0.0
        per_tensor[name] = {
            "n": n,
            "distinct_symbols": int(used.size),
            "entropy_bits_per_number": entropy,
            "header_bits": _tensor_header_bits(scheme, n_levels, n),
            "payload_estimate_bits": entropy * n,
        }
    words = encoder.get_compressed()
    header = {"scheme": scheme, "bits": int(bits), "n_words": int(words.size), "tensors": tensors}
    shapes = {name: tuple(t.shape) for name, t in deltas.items()}
    header_bits = header_bits_of(header, shapes)
    code = Code(header_bits + 32 * int(words.size), header_bits, 32 * int(words.size), words, header,
                quantized, per_tensor)
    decoded = decode(code, shapes)
    for name, q in quantized.items():
        if not torch.equal(decoded[name].view(torch.int32), q.view(torch.int32)):
            raise RuntimeError(f"compression round trip failed for {name!r}: decoded values differ")
    return code


def decode(code: Code, shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """Rebuild the quantized deltas from the header fields of the module table and ``code.words`` only.

    Reads: scheme, bits, payload length; per tensor the step (uniform) or float16 levels (kmeans) and the
    counts. Nothing else of ``code`` is used.
    """
    header = code.header
    scheme, n_levels = header["scheme"], 2 ** header["bits"]
    words = np.asarray(code.words, dtype=np.uint32)[: header["n_words"]]
    decoder = constriction.stream.queue.RangeDecoder(words)
    out: dict[str, torch.Tensor] = {}
    for name in sorted(shapes):
        shape = tuple(shapes[name])
        n = int(np.prod(shape, dtype=np.int64))
        if n == 0:
            out[name] = torch.zeros(shape, dtype=torch.float32)
            continue
        if name not in header["tensors"]:
            raise ValueError(f"the header has no entry for tensor {name!r}")
        entry = header["tensors"][name]
        if scheme == "uniform":
            levels = uniform_levels(np.float32(entry["step"]), n_levels)
        else:
            levels = np.asarray(entry["levels"], dtype=np.float16).astype(np.float32)
        counts = np.asarray(entry["counts"], dtype=np.int64)
        if counts.shape != (n_levels,) or int(counts.sum()) != n:
            raise ValueError(f"header counts of {name!r} do not match its {n} numbers")
        used, model = _model(counts, n)
        symbols = used[decoder.decode(model, n)] if model is not None else np.full(n, used[0])
        out[name] = torch.from_numpy(levels[symbols]).reshape(shape)
    return out
