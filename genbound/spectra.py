"""Singular values of learned updates, from their factors (THEORY.md section 7).

dW = B A with B (n x K) and A (K x m) stacked over the links: with thin QR B = Q_B R_B and
A^T = Q_A R_A, dW = Q_B (R_B R_A^T) Q_A^T, so svd(R_B R_A^T) (K x K) gives the singular values at
cost O((m + n) K^2). Selector updates are column-sparse: their singular values are those of the n x K'
block of nonzero columns (repeated indices add up). One function serves the spectra and the bounds.
"""

from __future__ import annotations

import torch

from .layers import AdapterLinear, LowRank


def lowrank_singular_values(factors: LowRank) -> torch.Tensor:
    """Singular values (descending, float64) of the update held by ``factors``, without forming it."""
    B = factors.B.detach().double()
    if factors.A is not None:
        _, r_b = torch.linalg.qr(B)
        _, r_a = torch.linalg.qr(factors.A.detach().double().T)
        return torch.linalg.svdvals(r_b @ r_a.T)
    uniq, inverse = torch.unique(factors.idx, return_inverse=True)
    cols = B.new_zeros(B.shape[0], len(uniq)).index_add_(1, inverse.to(B.device), B)
    return torch.linalg.svdvals(cols)


def update_singular_values(layer: AdapterLinear) -> torch.Tensor:
    """Singular values of an adapter layer's whole update s * sum_t B_t A_t (every link)."""
    return lowrank_singular_values(layer.factors())


def spectral_norm(matrix: torch.Tensor) -> float:
    """||M||_2, exact (largest singular value, float64)."""
    return float(torch.linalg.matrix_norm(matrix.detach().double(), ord=2)) if matrix.numel() else 0.0
