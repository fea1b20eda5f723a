"""Batched k-means (Lloyd's algorithm) used to initialise codebooks from data."""
from __future__ import annotations

import torch
from torch import Tensor


def nearest_code(x: Tensor, codebook: Tensor, chunk_elems: int = 1 << 24) -> Tensor:
    """Index of the nearest code (squared L2) for each row of ``x``.

    Computed as ``argmin_j ‖c_j‖² − 2 x·c_j`` with matmuls over row chunks of at most ``chunk_elems``
    distance entries, so memory is O(chunk · K), never O(N · K · D).

    Args:
        x: (N, D) vectors.
        codebook: (K, D) codes.
    Returns:
        (N,) int64 indices.
    """
    x = x.float()
    codebook = codebook.float()
    c_sq = codebook.pow(2).sum(-1)
    rows = max(1, chunk_elems // max(1, codebook.shape[0]))
    out = torch.empty(x.shape[0], dtype=torch.long, device=x.device)
    for start in range(0, x.shape[0], rows):
        chunk = x[start : start + rows]
        scores = torch.addmm(c_sq.unsqueeze(0), chunk, codebook.t(), alpha=-2.0)
        out[start : start + rows] = scores.min(dim=-1).indices  # = argmin (first minimum), ~2x faster on CPU
    return out


def sample_rows(x: Tensor, n: int, generator: torch.Generator | None = None) -> Tensor:
    """``n`` rows of ``x`` drawn without replacement when possible, with replacement otherwise."""
    num = x.shape[0]
    if num >= n:
        idx = torch.randperm(num, generator=generator, device="cpu")[:n]
    else:
        idx = torch.randint(0, num, (n,), generator=generator, device="cpu")
    return x[idx.to(x.device)]


def kmeans_plus_plus(x: Tensor, k: int, generator: torch.Generator | None = None) -> Tensor:
    """k-means++ seeding: each new seed is a row drawn with probability ∝ squared distance to the nearest
    seed so far. Needs ``N >= k``. Returns (k, D)."""
    n = x.shape[0]
    first = int(torch.randint(0, n, (1,), generator=generator))
    seeds = [first]
    min_d2 = (x - x[first]).pow(2).sum(-1)
    for _ in range(1, k):
        total = min_d2.sum()
        if float(total) <= 0:  # all remaining rows coincide with a seed
            idx = int(torch.randint(0, n, (1,), generator=generator))
        else:
            idx = int(torch.multinomial((min_d2 / total).cpu().double(), 1, generator=generator))
        seeds.append(idx)
        min_d2 = torch.minimum(min_d2, (x - x[idx]).pow(2).sum(-1))
    return x[torch.tensor(seeds, device=x.device)].clone()


def kmeans(
    x: Tensor, k: int, iters: int = 10, generator: torch.Generator | None = None, max_samples_per_code: int = 16
) -> tuple[Tensor, Tensor]:
    """Cluster ``x`` into ``k`` centroids.

    At most ``max_samples_per_code · k`` random rows are clustered (bounding the cost for large batches); the
    returned counts are those of the full ``x`` assigned to the final centroids.

    Seeds with k-means++ (when ``N < k``, every row is a seed and the remaining seeds are rows drawn with
    replacement, jittered by 1e-3 of the data standard deviation so that they can split), then runs ``iters``
    Lloyd iterations; an empty cluster keeps its previous centroid.

    Args:
        x: (N, D) float vectors, N >= 1.
        k: number of centroids.
    Returns:
        ``(centroids (k, D) float32, counts (k,) float32)`` — counts of the final assignment.
    """
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"kmeans needs a non-empty (N, D) tensor, got shape {tuple(x.shape)}")
    full = x.float()
    x = full
    if x.shape[0] > max_samples_per_code * k:
        x = sample_rows(full, max_samples_per_code * k, generator)
    if x.shape[0] >= k:
        centroids = kmeans_plus_plus(x, k, generator)
    else:
        extra = sample_rows(x, k - x.shape[0], generator)
        noise = torch.randn(extra.shape, generator=generator, device="cpu").to(x.device)
        centroids = torch.cat([x, extra + 1e-3 * x.std().clamp_min(1e-12) * noise])
    counts = torch.zeros(k, device=x.device)
    for _ in range(max(1, iters)):
        assign = nearest_code(x, centroids)
        counts = torch.bincount(assign, minlength=k).float()
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        filled = counts > 0
        centroids[filled] = sums[filled] / counts[filled].unsqueeze(-1)
    assign = nearest_code(full, centroids)
    counts = torch.bincount(assign, minlength=k).float()
    return centroids, counts
