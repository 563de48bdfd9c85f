"""The learned update dW of one n x m matrix, in whichever form a method holds it, and what is computed from it.

Three forms (docs/theory.md sections 7 and 10):

    factors:  dW = s B A          B: n x K, A: K x m                       (dense low-rank links)
    columns:  dW[:, idx] += s B   B: n x K, idx: K column indices          (selectors, W's own columns)
    dense:    dW given as an n x m matrix                                  (full fine-tuning, DoRA)

(VeRA's diagonal scalings are folded into its factors: diag(b) B diag(d) and A.)

Everything that needs dW as a whole asks an ``Update``: the fused path, the merged
weight W0 + dW (summed in float32, or float64 for a float64 W0, and rounded once to the compute dtype: one
rounding rule everywhere), landscapes in dW space, spectra, and Theorem 1's norms. Singular values come
from the factors without forming dW: with thin QRs B = Q_B R_B and A^T = Q_A R_A, the singular values of dW
are those of the K x K core R_B R_A^T; a column update's are those of its block of nonzero columns (repeated
indices add up).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

FACTORS, COLUMNS, DENSE = "factors", "columns", "dense"
HOW = {FACTORS: "from the factors: thin QRs and the SVD of the K x K core",
       COLUMNS: "from the block of nonzero columns",
       DENSE: "dense SVD of the n x m update (not low-rank)"}


@dataclass(frozen=True)
class Update:
    """dW of an ``n x m`` matrix; see the module docstring. Build with ``factors``, ``columns`` or ``dense``."""

    n: int
    m: int
    form: str
    B: torch.Tensor | None = None
    A: torch.Tensor | None = None
    idx: torch.Tensor | None = None
    D: torch.Tensor | None = None
    scale: float = 1.0

    @staticmethod
    def factors(B: torch.Tensor, A: torch.Tensor, scale: float = 1.0) -> Update:
        return Update(B.shape[0], A.shape[1], FACTORS, B=B, A=A, scale=scale)

    @staticmethod
    def columns(B: torch.Tensor, idx: torch.Tensor, m: int, scale: float = 1.0) -> Update:
        return Update(B.shape[0], m, COLUMNS, B=B, idx=idx, scale=scale)

    @staticmethod
    def dense(D: torch.Tensor) -> Update:
        return Update(D.shape[0], D.shape[1], DENSE, D=D)

    @property
    def scaled_B(self) -> torch.Tensor:
        """s B: the factor that carries the scale."""
        return self.scale * self.B

    @property
    def how(self) -> str:
        """How its singular values are computed, in words."""
        return HOW[self.form]

    def add_into(self, W: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
        """W += alpha dW in place, in W's dtype, without forming dW for factors and columns; returns W."""
        if self.form == FACTORS:
            if self.B.shape[1]:
                W.addmm_(self.B.detach().to(W.dtype), self.A.detach().to(W.dtype), alpha=alpha * self.scale)
        elif self.form == COLUMNS:
            if self.B.shape[1]:
                W.index_add_(1, self.idx, self.B.detach().to(W.dtype), alpha=alpha * self.scale)
        else:
            W.add_(self.D.detach().to(W.dtype), alpha=alpha)
        return W

    def to_dense(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """dW as an n x m matrix in ``dtype`` (default: its tensors' dtype); differentiable in B and A."""
        dtype = dtype or (self.B if self.B is not None else self.D).dtype
        if self.form == FACTORS:
            return (self.scaled_B.to(dtype) @ self.A.to(dtype)) if self.B.shape[1] else self._zeros(dtype)
        if self.form == COLUMNS:
            return self._zeros(dtype).index_add(1, self.idx, self.scaled_B.to(dtype))
        return self.D.to(dtype)

    def _zeros(self, dtype: torch.dtype) -> torch.Tensor:
        like = self.B if self.B is not None else self.D
        return torch.zeros(self.n, self.m, dtype=dtype, device=like.device)

    def merged(self, W0: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """W0 + dW, summed in float32 (float64 for a float64 W0) and rounded once to ``dtype`` (default W0's)."""
        return merged(W0, [self], dtype)

    def column_block(self) -> torch.Tensor:
        """A column update's n x K' block of nonzero columns (repeated indices added up), float64."""
        B = self.scaled_B.detach().double()
        uniq, inverse = torch.unique(self.idx, return_inverse=True)
        return B.new_zeros(B.shape[0], len(uniq)).index_add_(1, inverse.to(B.device), B)

    def singular_values(self) -> torch.Tensor:
        """Singular values of dW, descending, float64 (see the module docstring)."""
        return batched_singular_values([self])[0]


def batched_singular_values(items: list[Update]) -> list[torch.Tensor]:
    """Singular values of many updates, batched over those whose shapes agree (one QR / SVD call per group)."""
    keyed: list[tuple[str, tuple, torch.Tensor, torch.Tensor | None]] = []
    for up in items:
        if up.form == FACTORS:
            keyed.append((FACTORS, (tuple(up.B.shape), tuple(up.A.shape)), up.scaled_B.detach().double(),
                          up.A.detach().double().T))
        elif up.form == COLUMNS:
            block = up.column_block()
            keyed.append((DENSE, tuple(block.shape), block, None))
        else:
            keyed.append((DENSE, tuple(up.D.shape), up.D.detach().double(), None))
    out: list[torch.Tensor | None] = [None] * len(items)
    groups: dict[tuple, list[int]] = {}
    for i, (kind, shape, _, _) in enumerate(keyed):
        groups.setdefault((kind, shape), []).append(i)
    for (kind, _), idx in groups.items():
        first = torch.stack([keyed[i][2] for i in idx])
        if kind == FACTORS:
            r_b = torch.linalg.qr(first)[1]
            r_a = torch.linalg.qr(torch.stack([keyed[i][3] for i in idx]))[1]
            first = r_b @ r_a.transpose(1, 2)
        for i, sv in zip(idx, torch.linalg.svdvals(first)):
            out[i] = sv
    return out


def merged(W0: torch.Tensor, parts: list[Update], dtype: torch.dtype | None = None) -> torch.Tensor:
    """W0 + sum of ``parts``, added one after the other in float32 (float64 for a float64 W0) and rounded once
    to ``dtype`` (default W0's): the one rounding rule of every merged weight."""
    acc = torch.promote_types(W0.dtype, torch.float32)
    W = W0.detach().to(acc, copy=True)
    for part in parts:
        part.add_into(W)
    return W.to(dtype or W0.dtype)


def spectral_norm(matrix: torch.Tensor) -> float:
    """||M||_2, exact (largest singular value, float64)."""
    return float(torch.linalg.matrix_norm(matrix.detach().double(), ord=2)) if matrix.numel() else 0.0


def spectrum_stats(s: torch.Tensor) -> dict:
    """||dW||_2, ||dW||_F, stable rank ||dW||_F^2 / ||dW||_2^2 and effective rank exp(H(s / sum s))
    (Roy & Vetterli 2007) from singular values; ranks are 0 for a zero update."""
    s = s.detach().double().cpu().clamp(min=0)
    top, fro2, total = float(s.max()) if s.numel() else 0.0, float((s**2).sum()), float(s.sum())
    if top == 0:
        return {"norm_2": 0.0, "norm_fro": 0.0, "stable_rank": 0.0, "effective_rank": 0.0}
    p = s[s > 0] / total
    return {"norm_2": top, "norm_fro": math.sqrt(fro2), "stable_rank": fro2 / top**2,
            "effective_rank": math.exp(float(-(p * p.log()).sum()))}
