"""Low-rank factorisation math for LoRA extraction and resizing (pure functions, batched, any device).

Owns: the truncated SVD of weight deltas (randomized or exact), the split of singular values between the
``up`` and ``down`` factors, kept-energy accounting, re-truncating a product ``up @ down`` without ever
forming it, and the dynamic rank rules (``sv_ratio``, ``sv_fro``, ``sv_cumulative``).

"Energy" is the squared Frobenius norm: a rank-r factorisation of a matrix with singular values s keeps
``sum(s[:r]**2) / sum(s**2)`` of the delta's energy (Eckart-Young: no rank-r matrix keeps more).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

DYNAMIC_METHODS = ("sv_ratio", "sv_fro", "sv_cumulative")


def randomized_svd(a: torch.Tensor, rank: int, oversample: int = 16, power_iters: int = 2,
                   seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-``rank`` singular triplets of ``a`` (shape ``(..., m, n)``, batched) by randomized subspace iteration.

    Halko, Martinsson & Tropp 2011, "Finding structure with randomness", Algorithms 4.4 (subspace iteration,
    re-orthonormalised after every product so small singular values are not lost to rounding) and 5.1
    (SVD of the small projected matrix). Cost ~ (2 * power_iters + 2) * m * n * (rank + oversample) flops.
    Returns ``U (..., m, k)``, ``S (..., k)``, ``Vh (..., k, n)`` with ``k = min(rank, m, n)``.
    """
    m, n = a.shape[-2], a.shape[-1]
    k = min(rank, m, n)
    width = min(k + oversample, m, n)
    gen = torch.Generator(device=a.device).manual_seed(seed)
    omega = torch.randn(*a.shape[:-2], n, width, device=a.device, dtype=a.dtype, generator=gen)
    q, _ = torch.linalg.qr(a @ omega)
    at = a.transpose(-2, -1)
    for _ in range(power_iters):
        z, _ = torch.linalg.qr(at @ q)
        q, _ = torch.linalg.qr(a @ z)
    u_small, s, vh = torch.linalg.svd(q.transpose(-2, -1) @ a, full_matrices=False)
    return (q @ u_small)[..., :k], s[..., :k], vh[..., :k, :]


def exact_svd(a: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-``rank`` singular triplets of ``a`` from a full (thin) LAPACK/cuSOLVER SVD; the reference."""
    u, s, vh = torch.linalg.svd(a, full_matrices=False)
    k = min(rank, s.shape[-1])
    return u[..., :k], s[..., :k], vh[..., :k, :]


def gram_svd(a: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-``rank`` singular triplets of ``a`` (``(..., m, n)``) from the eigendecomposition of its smaller Gram matrix.

    With m <= n: ``a a^T = U S^2 U^T`` (symmetric eigensolver), then ``S Vh = U_k^T a``. This is the optimal
    rank-k projection up to float32 rounding of the Gram matrix (errors ~1e-7 of the largest squared singular
    value), so its kept energy matches a full SVD; it costs one m*m*n product plus an m x m eigensolve, which
    for SDXL-sized deltas is 5-20x cheaper than LAPACK's SVD. Returns ``U, S, Vh`` plus the whole spectrum
    (all ``min(m, n)`` singular values, descending) for the "rank r keeps X %" table.
    Refs: Golub & Van Loan, "Matrix Computations" 4th ed. section 8.6 (SVD via the symmetric eigenproblem).
    """
    flip = a.shape[-2] > a.shape[-1]
    if flip:
        a = a.transpose(-2, -1)
    evals, evecs = torch.linalg.eigh(a @ a.transpose(-2, -1))
    spectrum = evals.flip(-1).clamp_min(0).sqrt()
    k = min(rank, a.shape[-2])
    u = evecs[..., -k:].flip(-1)
    sv = u.transpose(-2, -1) @ a  # rows: s_i * v_i^T
    s = sv.norm(dim=-1)
    vh = sv / s.clamp_min(torch.finfo(s.dtype).tiny).unsqueeze(-1)
    if flip:
        return vh.transpose(-2, -1), s, u.transpose(-2, -1), spectrum
    return u, s, vh, spectrum


def fast_matmul_dtype(device: torch.device) -> torch.dtype:
    """bfloat16 where matrix products in it are much faster than float32 (CUDA, CPUs with AMX), else float32."""
    if device.type == "cuda":
        return torch.bfloat16
    amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return torch.bfloat16 if device.type == "cpu" and amx is not None and amx() else torch.float32


def orthonormalise(y: torch.Tensor) -> torch.Tensor:
    """An orthonormal basis of ``y``'s columns (``(..., m, b)``, float32): Cholesky QR, Householder QR as fallback.

    Cholesky QR (``y R^-1`` with ``R^T R = y^T y``, the b x b factorisation in float64) is about half the cost of
    Householder QR for SDXL-sized blocks; its orthogonality degrades with cond(y)^2 * eps, which only matters
    between power iterations for the span, and a batch whose Gram is not numerically positive definite
    (steep spectra) goes through Householder QR. Fukaya et al. 2020, "LU-Cholesky QR algorithms" (CholeskyQR).
    """
    r, info = torch.linalg.cholesky_ex((y.transpose(-2, -1) @ y).double(), upper=True)
    if bool((info != 0).any()):
        return torch.linalg.qr(y)[0]
    return torch.linalg.solve_triangular(r.float(), y, upper=True, left=False)


def subspace_svd(a: torch.Tensor, rank: int, extra: int | None = None, iters: int = 6, seed: int = 0,
                 sketch_dtype: torch.dtype | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-``rank`` singular triplets of ``a`` (``(..., m, n)``, batched) by block subspace iteration.

    Halko, Martinsson & Tropp 2011, Algorithm 4.4 (randomized subspace iteration) with a wide block
    ``rank + extra`` (default ``extra = rank``), QR re-orthonormalisation after every ``a a^T`` product (LU
    normalisation as in fbpca was measured to lose 0.1-0.3 pp here), then Rayleigh-Ritz. The wide block is what makes flat spectra work:
    the block's top ``rank`` Ritz directions are within 0.03-0.07 pp of the optimal energy after 6 iterations
    on a flat spectrum (s_i = i^-0.3 plus equal-energy noise, rank 128 of 1280) where a block of ``rank + 16``
    misses by several tenths and 4 iterations by 0.13-0.21 pp. Cost ~ (2 * iters + 2) products of width
    ``rank + extra`` in ``sketch_dtype`` plus one float32 product of that width. The range finder's products may run in ``sketch_dtype``
    (bfloat16 on AMX CPUs and GPUs: 4-8x faster; the subspace found is as good as in float32, measured),
    but the Rayleigh-Ritz step is one float32 product ``Q^T a`` with the orthonormal block ``Q``, so ``S`` and
    ``Vh`` are exact for the chosen subspace and the kept energy is ``sum(S^2)`` exactly.
    Returns ``U (..., m, k)``, ``S (..., k)``, ``Vh (..., k, n)`` with ``k = min(rank, m, n)``.
    """
    flip = a.shape[-2] > a.shape[-1]
    if flip:
        a = a.transpose(-2, -1)  # work on the short side: the basis is m x b with m <= n
    m, n = a.shape[-2], a.shape[-1]
    k = min(rank, m)
    width = min(k + (rank if extra is None else extra), m)
    lp = sketch_dtype or fast_matmul_dtype(a.device)
    a_lp = a.to(lp).contiguous()
    at_lp = a_lp.transpose(-2, -1).contiguous()  # both layouts: products with transposed views run 2-3x slower
    gen = torch.Generator(device=a.device).manual_seed(seed)
    omega = torch.randn(*a.shape[:-2], n, width, device=a.device, generator=gen).to(lp)
    q = orthonormalise((a_lp @ omega).float())
    for i in range(iters):
        y = (a_lp @ (at_lp @ q.to(lp))).float()
        q = torch.linalg.qr(y)[0] if i == iters - 1 else orthonormalise(y)  # exact orthonormality for Ritz
    # Rayleigh-Ritz in float32 (a bfloat16 Gram cannot rank directions whose energies differ by < 1 %):
    # with z = a^T Q, the eigenvectors W of z^T z = Q^T a a^T Q give U = Q W, S^2, and rows s_i v_i^T = W^T z^T
    z = q.transpose(-2, -1) @ a
    evals, w = torch.linalg.eigh(z @ z.transpose(-2, -1))
    w = w[..., -k:].flip(-1)
    u = q @ w
    sv = w.transpose(-2, -1) @ z
    s = sv.norm(dim=-1)
    vh = sv / s.clamp_min(torch.finfo(s.dtype).tiny).unsqueeze(-1)
    if flip:
        return vh.transpose(-2, -1), s, u.transpose(-2, -1)
    return u, s, vh


SOLVERS = ("subspace", "gram", "randomized", "exact")
# below this short side an eigendecomposition of the Gram matrix costs about what 6 block iterations cost
# (640 x 640: ~50 ms either way on one core), so "subspace" uses it there and keeps the full spectrum
SUBSPACE_MIN_SIDE = 1024


def truncated_svd(a: torch.Tensor, rank: int, solver: str = "subspace", oversample: int = 16,
                  power_iters: int = 4) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``U, S, Vh`` (top ``rank``) and the singular values known beyond them, by the named solver.

    "subspace": :func:`subspace_svd` (default; within 0.1 pp of the optimum, only the top ``rank`` values are
    known; falls back to "gram" when 4 * rank reaches the short side or it is under ``SUBSPACE_MIN_SIDE``). "gram": :func:`gram_svd` (exact kept
    energy, full spectrum). "randomized": :func:`randomized_svd`
    (fastest, but on flat spectra it keeps up to a few percentage points less than the optimum: measured
    0.1-3 pp for power-law spectra at rank 128 of 1280-wide layers). "exact": LAPACK/cuSOLVER SVD.
    """
    if solver == "gram":
        return gram_svd(a, rank)
    if solver == "subspace":
        if 4 * rank >= min(a.shape[-2], a.shape[-1]) or min(a.shape[-2], a.shape[-1]) < SUBSPACE_MIN_SIDE:
            return gram_svd(a, rank)  # as cheap here (measured), and it gives the whole spectrum
        u, s, vh = subspace_svd(a, rank)
        return u, s, vh, s
    if solver == "exact":
        u, s, vh = torch.linalg.svd(a, full_matrices=False)
        k = min(rank, s.shape[-1])
        return u[..., :k], s[..., :k], vh[..., :k, :], s
    if solver == "randomized":
        if 2 * (rank + oversample) >= min(a.shape[-2], a.shape[-1]):
            return truncated_svd(a, rank, "gram")  # the sketch would be most of the matrix
        u, s, vh = randomized_svd(a, rank + oversample, oversample=0, power_iters=power_iters)
        k = min(rank, s.shape[-1])
        return u[..., :k], s[..., :k], vh[..., :k, :], s
    raise ValueError(f"unknown SVD solver {solver!r}: use one of {', '.join(SOLVERS)}")


def split_factors(u: torch.Tensor, s: torch.Tensor, vh: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``up = U sqrt(S)``, ``down = sqrt(S) Vh`` so that ``up @ down = U S Vh``.

    Splitting the singular values evenly (sd-scripts puts all of S in ``up``) keeps both factors in the same
    range, which matters when they are stored in fp16: small singular values stay out of the subnormals.
    """
    root = s.clamp_min(0).sqrt()
    return u * root.unsqueeze(-2), root.unsqueeze(-1) * vh


def product_svd(up: torch.Tensor, down: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Exact thin SVD of ``up @ down`` (``(m, r) @ (r, n)``) in O((m + n) r^2), never forming the m x n product.

    With ``up = Qu Ru`` and ``down^T = Qd Rd`` (QR), ``up @ down = Qu (Ru Rd^T) Qd^T``; the SVD of the r x r core
    ``Ru Rd^T = Uc S Vc^T`` gives ``U = Qu Uc``, ``Vh = (Qd Vc)^T``. This is why resizing an SDXL LoRA takes
    seconds where sd-scripts' ``resize_lora.py`` (full SVD of every ``up @ down``) takes minutes.
    """
    qu, ru = torch.linalg.qr(up)
    qd, rd = torch.linalg.qr(down.transpose(-2, -1))
    uc, s, vch = torch.linalg.svd(ru @ rd.transpose(-2, -1), full_matrices=False)
    return qu @ uc, s, vch @ qd.transpose(-2, -1)


def kept_energy(s: torch.Tensor, total_energy: torch.Tensor | float, rank: int) -> float:
    """Fraction of a matrix's energy (``total_energy`` = squared Frobenius norm) kept by its top ``rank`` values."""
    total = float(total_energy)
    if total <= 0:
        return 1.0
    return min(1.0, float((s[:rank].double() ** 2).sum()) / total)


def energy_curve(s: torch.Tensor, total_energy: float, ranks: list[int], complete: bool) -> dict[int, float]:
    """``{r: kept_energy(s, total, r)}`` (the "rank r keeps X %" table) for the ranks ``s`` covers.

    ``complete``: ``s`` is the whole spectrum, so any larger rank keeps everything.
    """
    return {r: (kept_energy(s, total_energy, r) if r <= s.shape[-1] else 1.0) for r in ranks
            if r <= s.shape[-1] or complete}


def choose_rank(s: torch.Tensor, max_rank: int, method: str | None = None, param: float | None = None,
                total_energy: float | None = None, total_sum: float | None = None,
                zero_tol: float = 1e-12) -> int:
    """How many singular values of ``s`` (descending, one module) to keep; 0 means "this module is zero".

    Rules (the smallest ``k`` that meets the criterion, then capped at ``max_rank`` and at ``len(s)``):

    - fixed (``method`` None): ``k = max_rank``;
    - ``sv_ratio p``: keep every ``s_i >= s_0 / p`` (p >= 1);
    - ``sv_fro p``: smallest k with ``sqrt(sum(s[:k]^2) / sum(s^2)) >= p`` (Frobenius-norm fraction, as in
      sd-scripts, so 0.9 keeps 81 % of the energy);
    - ``sv_cumulative p``: smallest k with ``sum(s[:k]) / sum(s) >= p``.

    ``total_energy``/``total_sum`` are the full-spectrum sums when ``s`` is truncated (default: from ``s``).
    Differences from sd-scripts' ``resize_lora.py`` (rank_resize/index_sv_*): no extra "+1" rank; a module with
    fewer singular values than the target keeps all it has instead of raising IndexError; an all-zero module
    returns 0 (dropped and reported) instead of rank 1 with NaN statistics.
    """
    s = s.double()
    if s.numel() == 0 or float(s[0]) <= zero_tol:
        return 0
    available = int((s > float(s[0]) * 1e-7).sum())  # numerically-zero tail values carry no direction
    if method is None:
        k = max_rank
    elif method == "sv_ratio":
        if param is None or param < 1:
            raise ValueError(f"sv_ratio needs a ratio >= 1 (keep s_i >= s_0 / ratio), got {param}")
        k = int((s >= s[0] / param).sum())
    elif method in ("sv_fro", "sv_cumulative"):
        if param is None or not 0 < param <= 1:
            raise ValueError(f"{method} needs a fraction in (0, 1], got {param}")
        if method == "sv_fro":
            values, total, target = s ** 2, total_energy if total_energy else float((s ** 2).sum()), param ** 2
        else:
            values, total, target = s, total_sum if total_sum else float(s.sum()), param
        reached = torch.cumsum(values, 0) / total >= target - 1e-12
        k = int(reached.to(torch.int8).argmax()) + 1 if bool(reached.any()) else s.numel()
    else:
        raise ValueError(f"unknown dynamic method {method!r}: use one of {', '.join(DYNAMIC_METHODS)}")
    return max(1, min(k, max_rank, available))


def parse_dynamic(spec: str) -> tuple[str, float]:
    """``"sv_fro:0.9"`` -> ``("sv_fro", 0.9)`` with a message naming the accepted forms."""
    method, _, value = spec.partition(":")
    if method not in DYNAMIC_METHODS or not value:
        raise ValueError(f"dynamic rule {spec!r} not understood: write METHOD:VALUE with METHOD one of "
                         f"{', '.join(DYNAMIC_METHODS)}, e.g. sv_fro:0.9")
    try:
        return method, float(value)
    except ValueError:
        raise ValueError(f"dynamic rule {spec!r}: {value!r} is not a number") from None


def clamp_factors(up: torch.Tensor, down: torch.Tensor, quantile: float) -> tuple[torch.Tensor, torch.Tensor]:
    """sd-scripts' ``--clamp_quantile``: clip both factors to the ``quantile`` of |entries| (1.0 = off).

    Kept for compatibility only: the clip removes the largest entries, which carry the dominant components,
    so it lowers fidelity (measured in sd-scripts' notes: relative error 0.048 -> 0.22 at 0.99).
    Uses |values| and kthvalue so it works on factors of any size (torch.quantile stops at 16 M elements).
    """
    if quantile >= 1.0:
        return up, down
    flat = torch.cat([up.reshape(-1), down.reshape(-1)]).abs().float()
    k = max(1, min(flat.numel(), math.ceil(quantile * flat.numel())))
    hi = float(flat.kthvalue(k).values)
    return up.clamp(-hi, hi), down.clamp(-hi, hi)


def squared_norm(x: torch.Tensor) -> torch.Tensor:
    """Squared Frobenius norm over the last two dims, float64, accurate to ~1e-8 relative without a float64 copy.

    A single float32 ``vector_norm`` over a whole SDXL-sized matrix is off by ~1e-3 relative on CPU (measured:
    -1.1e-3 on a 10240 x 1280 delta), enough to move a layer's kept energy by 0.1 pp; row norms in float32
    (short sums) added up in float64 are not.
    """
    return (torch.linalg.vector_norm(x, dim=-1).double() ** 2).sum(-1)


@dataclass
class Factorisation:
    """One module's low-rank factors plus what they keep."""

    up: torch.Tensor  # (m, k)
    down: torch.Tensor  # (k, n)
    singular_values: torch.Tensor  # every singular value the solver knows (all of them for gram/exact)
    total_energy: float  # squared Frobenius norm of the matrix factorised
    kept: float  # energy fraction actually kept by up @ down (after clamping)


def factorise_batch(mats: torch.Tensor, rank: int, solver: str = "subspace", clamp_quantile: float = 1.0,
                    out_dtype: torch.dtype = torch.float32) -> list[Factorisation]:
    """Rank-``rank`` factors for a stack of same-shape matrices ``(B, m, n)`` (float32, any device).

    Kept energy is measured on the factors as they will be written: after clamping and after rounding to
    ``out_dtype`` (``1 - |M - up @ down|^2 / |M|^2``), so the report is what a loader will actually get.
    """
    u, s, vh, spectrum = truncated_svd(mats, rank, solver)
    k = min(rank, s.shape[-1])
    up, down = split_factors(u[..., :k], s[..., :k], vh[..., :k, :])
    totals = squared_norm(mats)
    out = []
    for i in range(mats.shape[0]):
        up_i, down_i = clamp_factors(up[i], down[i], clamp_quantile)
        up_i, down_i = up_i.to(out_dtype), down_i.to(out_dtype)
        total = float(totals[i])
        if total > 0:
            residual = torch.addmm(mats[i], up_i.float(), down_i.float(), alpha=-1.0)
            kept = max(0.0, 1.0 - float(squared_norm(residual)) / total)
            del residual
        else:
            kept = 1.0
        out.append(Factorisation(up_i.cpu(), down_i.cpu(), spectrum[i].cpu(), total, kept))
    return out
