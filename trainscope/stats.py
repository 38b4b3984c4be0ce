"""Pure, sync-free tensor statistics.

Every function here runs under ``torch.no_grad()`` on the tensor's own device, in fp32 whatever the
input dtype (bf16/fp16 under autocast included), and returns *device tensors*: nothing here calls
``.item()``, ``.tolist()`` or anything else that waits for the device.  The probe stacks the results
of one sampled step and copies them to the host once (:func:`host_copy`).

Cost model (CPU, one (64, 64, 24, 24) fp32 activation, see ``shared/perf-notes.md``): the summary is
built from full passes: ``sum``, a BLAS ``dot`` for the sum of squares and the extrema (``aminmax``,
or ``amin`` + ``amax`` on large CPU tensors, where two vectorized passes are faster),
about 4x a plain sum in all, where the obvious ``std_mean`` / ``count_nonzero`` / ``isfinite`` route
costs ~200x.  Per-element tests (zeros, saturation, histogram bins) run on a fixed random
subsample of at most :data:`HIST_SAMPLE` elements.

Non-finite values: the extrema propagate NaN and return ±Inf exactly, so whether a tensor holds a
non-finite value is known *exactly* from the summary at no extra cost.  The exact NaN / +Inf / -Inf
counts need three more full passes (~75x a sum), so they are computed only in ``exact_nonfinite``
mode, which the probe switches on once non-finite values have been seen (see ``Probe``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import ParamSpec, TypeVar

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "ACT_FIELDS",
    "HIST_EDGES",
    "HIST_LABELS",
    "HIST_SAMPLE",
    "NBINS",
    "ActSummary",
    "finalize_summaries",
    "hist_codes",
    "host_copy",
    "subsample",
    "summarize",
    "without_grad",
]

# --------------------------------------------------------------------------------------------
# Histogram layout: fixed symmetric-log bins, identical for every layer, step and dtype.
#
#   index 0            -Inf
#   1 .. 48            negative values, from (-inf, -10^5.67] (index 1) to (-10^-9.67, 0) (48)
#   49                 exactly zero
#   50 .. 97           positive values, from (0, 10^-9.67) (50) to [10^5.67, inf) (97)
#   98                 +Inf
#   99                 NaN
#
# Magnitude bins are 1/3 decade wide over [1e-10, 1e6]; the innermost bins also hold the tiny
# non-zero values below 1e-10 and the outermost ones the finite values above 1e6.
# --------------------------------------------------------------------------------------------
LOG_MIN = -10.0
LOG_MAX = 6.0
BINS_PER_DECADE = 3
NMAG = int((LOG_MAX - LOG_MIN) * BINS_PER_DECADE)  # 48 magnitude bins per sign
NEG_INF = 0
ZERO = NMAG + 1  # 49
POS_INF = 2 * NMAG + 2  # 98
NAN = 2 * NMAG + 3  # 99
NBINS = 2 * NMAG + 4  # 100
HIST_BIN_SAMPLE = 1 << 12
"""Of the subsample, at most this many (an unbiased, evenly strided part) are binned."""
HIST_SAMPLE = 1 << 14
"""At most this many elements of a tensor enter its histogram, zero and saturation counts
(a fixed random subsample; all elements of smaller tensors)."""

_MAG_EDGES = 10.0 ** np.linspace(LOG_MIN, LOG_MAX, NMAG + 1)
HIST_EDGES: np.ndarray = np.concatenate([-_MAG_EDGES[::-1], _MAG_EDGES])
"""Bin edges of the magnitude bins: ``HIST_EDGES[:NMAG+1]`` negative, ``[NMAG+1:]`` positive."""


def _label(i: int) -> str:
    if i == NEG_INF:
        return "-inf"
    if i == POS_INF:
        return "+inf"
    if i == NAN:
        return "nan"
    if i == ZERO:
        return "0"
    if i < ZERO:
        b = ZERO - 1 - i
        return f"-1e{LOG_MIN + b / BINS_PER_DECADE:+.2f}"
    b = i - ZERO - 1
    return f"1e{LOG_MIN + b / BINS_PER_DECADE:+.2f}"


HIST_LABELS: tuple[str, ...] = tuple(_label(i) for i in range(NBINS))
"""A short label per bin (the lower magnitude edge of each value bin)."""

# --------------------------------------------------------------------------------------------
# The per-call summary vector.  One row per (module call, tensor); rows of one step are stacked.
#
# Full passes over the tensor: sum, sum of squares, the extrema (see _extrema).
# Everything that needs a per-element test (zeros, saturation, histogram bins) is done on a
# fixed random subsample of at most HIST_SAMPLE elements -- exact for tensors up to that size,
# an unbiased estimate above it (standard error of a fraction <= 0.4 percentage points).
# --------------------------------------------------------------------------------------------
ACT_FIELDS: tuple[str, ...] = (
    "sum",  # fp32 sum of the elements
    "sumsq",  # sum of squares (BLAS dot for contiguous fp32, else vector_norm**2)
    "min",
    "max",
    "sub_nonzero",  # non-zero elements of the subsample (count_nonzero: one op, no bool temporary)
    "sub_sat",  # saturated elements in the subsample (bounded activations), -1 where not applicable
    "nan",  # exact counts over the whole tensor in exact_nonfinite mode, -1 otherwise
    "posinf",
    "neginf",
    "sub_neg",  # negative elements of the subsample
)
_F = {name: i for i, name in enumerate(ACT_FIELDS)}
NFIELDS = len(ACT_FIELDS)

_P = ParamSpec("_P")
_R = TypeVar("_R")


def without_grad(fn: Callable[_P, _R]) -> Callable[_P, _R]:
    """``@torch.no_grad()`` for the per-tensor path: the same switch, at a fraction of the cost.

    ``torch.no_grad()`` as a decorator builds and clones a context manager on every call (~3 us);
    the probe calls its statistics ~130 times per sampled step on a 30-module model, nested.  This
    checks the thread-local grad mode and only flips it when it is on.
    """

    @functools.wraps(fn)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        if not torch.is_grad_enabled():
            return fn(*args, **kwargs)
        torch._C._set_grad_enabled(False)
        try:
            return fn(*args, **kwargs)
        finally:
            torch._C._set_grad_enabled(True)

    return wrapper


_generators: dict[torch.device, torch.Generator] = {}
_index_cache: dict[tuple[int, torch.device], Tensor] = {}


def _sample_index(numel: int, device: torch.device) -> Tensor:
    """A fixed random subset of ``HIST_SAMPLE`` flat indices for tensors of ``numel`` elements.

    Drawn once per (size, device) from a private generator, so the user's RNG streams are never
    touched (training stays bit-identical), and random rather than strided, so that the subsample
    cannot alias with a channel or feature period.  Two sorted runs, for memory locality: the
    first ``HIST_BIN_SAMPLE`` indices are themselves a random subset, so the histogram bins a
    contiguous prefix of the subsample (no strided copy).
    """
    key = (numel, device)
    idx = _index_cache.get(key)
    if idx is None:
        gen = _generators.get(device)
        if gen is None:
            gen = torch.Generator(device="cpu")
            gen.manual_seed(0x7A15C0DE)
            _generators[device] = gen
        perm = torch.randperm(numel, generator=gen)[:HIST_SAMPLE]
        head, tail = perm[:HIST_BIN_SAMPLE], perm[HIST_BIN_SAMPLE:]
        idx = torch.cat([head.sort().values, tail.sort().values]).to(device)
        if len(_index_cache) > 256:
            _index_cache.clear()
        _index_cache[key] = idx
    return idx


_MINUS_ONE: dict[torch.device, Tensor] = {}


def _minus_one(device: torch.device) -> Tensor:
    t = _MINUS_ONE.get(device)
    if t is None:
        t = _MINUS_ONE[device] = torch.tensor(-1.0, dtype=torch.float32, device=device)
    return t


def subsample(x: Tensor) -> Tensor:
    """The fixed subsample of ``x`` (all of it when small), flattened, fp32."""
    n = x.numel()
    if n <= HIST_SAMPLE:
        sub = x.reshape(-1)
    elif x.is_contiguous():  # index_select: half the time of take on CPU (15 against 28 us)
        sub = torch.index_select(x.view(-1), 0, _sample_index(n, x.device))
    else:  # take reads the logical order in place; a reshape would copy the whole tensor
        sub = torch.take(x, _sample_index(n, x.device))
    return sub if sub.dtype == torch.float32 else sub.float()


_BOUNDARIES: dict[torch.device, Tensor] = {}


def _boundaries(device: torch.device) -> Tensor:
    """The 99 sorted fp32 boundaries ``B`` for which ``bucketize(x, B)`` (the number of
    boundaries below ``x``) is the bin index of ``x``.

    ``-Inf`` -> 0; negative magnitude bins ``(-e[k+1], -e[k]]``; ``-smallest subnormal`` and ``0``
    bracket the zero bin; positive bins ``[e[k], e[k+1])`` (each edge lowered by one ulp, so an
    element equal to an edge opens its bin); ``fp32 max`` separates the outermost finite bin from
    ``+Inf``; and NaN, which compares below nothing, lands after the last boundary (bin 99).
    """
    b = _BOUNDARIES.get(device)
    if b is None:
        f32 = np.float32
        e = _MAG_EDGES[1:-1].astype(f32)  # the 47 inner edges, 1e-9.67 .. 1e5.67
        tiny = f32(np.finfo(f32).smallest_subnormal)
        neg = np.concatenate([[-np.inf], -e[::-1], [-tiny, 0.0]])
        pos = np.concatenate([np.nextafter(e, f32(0)), [np.finfo(f32).max, np.inf]])
        arr = np.concatenate([neg, pos]).astype(f32)
        b = _BOUNDARIES[device] = torch.from_numpy(arr).to(device)
    return b


def hist_codes(x: Tensor) -> Tensor:
    """Bin index (``0 .. NBINS-1``, int64) of every element of a 1-D fp32 tensor.

    One ``bucketize`` against fixed boundaries (:func:`_boundaries`): magnitude bins
    ``[10^(-10+k/3), 10^(-10+(k+1)/3))`` with the fp32 edges exact, signed around the zero bin,
    values below 1e-10 in the innermost and finite values above 1e6 in the outermost bins, ±Inf
    one bin further out, NaN in its own bin.  (It replaced a chain of ~16 elementwise ops around
    ``log10``, which also rounded values on an edge into the wrong bin.)
    """
    return torch.bucketize(x if x.is_contiguous() else x.contiguous(), _boundaries(x.device))


def _count_bins(codes: Tensor) -> Tensor:
    """Counts per bin (``NBINS``, int64) of bin indices."""
    if codes.is_cuda and torch.are_deterministic_algorithms_enabled():
        # bincount has no deterministic CUDA kernel; a sort + searchsorted count is exact and is.
        srt = codes.sort().values
        bounds = torch.arange(NBINS + 1, device=codes.device)
        return torch.searchsorted(srt, bounds).diff()
    return torch.bincount(codes, minlength=NBINS)


def histogram(x: Tensor) -> Tensor:
    """Histogram counts (``NBINS``, fp32) of the fixed subsample of ``x`` (not rescaled)."""
    return _count_bins(hist_codes(subsample(x))).float()


_SPLIT_EXTREMA = 1 << 15
"""From this many elements, fp32 CPU tensors take ``amax`` + ``amin`` instead of ``aminmax``."""


def _extrema(x: Tensor) -> tuple[Tensor, Tensor]:
    """``(min, max)`` of ``x``; NaN propagates and ±Inf are exact either way.

    On CPU, ``aminmax``'s kernel is slower than two vectorized passes for large fp32 tensors
    (1.6M elements: 231 us against 147 us; non-contiguous: 902 against 149 us) and faster for
    small ones (one dispatch) and for bf16; on CUDA it is one kernel instead of two.
    """
    if x.device.type == "cpu" and x.dtype == torch.float32 and x.numel() >= _SPLIT_EXTREMA:
        return x.amin(), x.amax()
    mn, mx = torch.aminmax(x)
    return mn, mx


def _sumsq(x: Tensor) -> Tensor:
    if x.dtype in (torch.float32, torch.float64) and x.is_contiguous():
        v = x.view(-1)
        out: Tensor = torch.dot(v, v)  # ~2.7x faster than vector_norm on CPU, one pass
        return out if out.dtype == torch.float32 else out.float()
    if x.dtype == torch.float64:  # vector_norm refuses to narrow to fp32: square in fp64
        sq: Tensor = torch.linalg.vector_norm(x).square().float()
        return sq
    norm: Tensor = torch.linalg.vector_norm(x, dtype=torch.float32)
    return norm.square()


@without_grad
def summarize(
    x: Tensor,
    *,
    bounds: tuple[float, float, float] | None = None,
    exact_nonfinite: bool = False,
    hist: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """Summary vector (``ACT_FIELDS``, fp32, on ``x.device``) of one tensor, and optionally its
    subsample histogram (``NBINS`` int64 counts).

    ``bounds = (center, half_range, threshold)`` enables the saturation count: an element is
    saturated when ``|x - center| >= threshold`` (e.g. ``(0, 1, 0.98)`` for tanh).
    """
    f32 = torch.float32
    mn, mx = _extrema(x)
    sub = subsample(x)
    neg = _minus_one(x.device)
    if mn.dtype != f32:  # bf16 / fp16: exact in fp32
        mn, mx = mn.float(), mx.float()
    # every part fp32: a stack of mixed dtypes takes a promoting path, ~3x slower than the cast
    parts = [x.sum(dtype=f32), _sumsq(x), mn, mx, torch.count_nonzero(sub).float()]
    if bounds is not None:
        center, _half, thr = bounds
        parts.append(((sub - center).abs_() >= thr).sum().float())
    else:
        parts.append(neg)
    if exact_nonfinite:
        parts.append(torch.isnan(x).sum().float())
        parts.append((x == math.inf).sum().float())
        parts.append((x == -math.inf).sum().float())
    else:
        parts += [neg, neg, neg]
    parts.append((sub < 0).sum().float())
    h = None
    if hist:
        n = sub.numel()
        if x.numel() > HIST_SAMPLE:  # a gathered subsample: its head is a random subset
            part = sub[:HIST_BIN_SAMPLE]
        elif n > HIST_BIN_SAMPLE:  # all of a small tensor: an even stride of it
            part = sub[:: -(-n // HIST_BIN_SAMPLE)]
        else:
            part = sub
        h = _count_bins(hist_codes(part))
    return torch.stack(parts), h


@without_grad
def unit_mask(x: Tensor, unit_dim: int, *, positive: bool, nonneg: bool = False) -> Tensor:
    """Per-unit activity of ``x`` along ``unit_dim`` (fp32 0/1 flags on the device).

    ``positive=True``: 1 where some element of the unit is > 0 (ReLU-style "fired");
    ``positive=False``: 1 where some element is non-zero (used for gradients).
    ``nonneg=True`` promises ``x >= 0`` (ReLU outputs): a per-unit sum, ~30% cheaper than a max
    over non-contiguous dims, then tells the same.
    """
    dims = tuple(d for d in range(x.dim()) if d != unit_dim % x.dim())
    if not dims:
        return (x > 0).float() if positive else (x != 0).float()
    if positive and nonneg:
        return (x.sum(dim=dims, dtype=torch.float32) > 0).float()
    hi = x.amax(dim=dims)
    if positive:
        return (hi > 0).float()
    return ((hi > 0) | (x.amin(dim=dims) < 0)).float()


# --------------------------------------------------------------------------------------------
# Host side: combine the rows of one step into per-layer numbers.
# --------------------------------------------------------------------------------------------
@dataclass
class ActSummary:
    """Per-layer statistics of one step, combined over every call of the layer in that step."""

    n: np.ndarray  # elements seen
    mean: np.ndarray
    std: np.ndarray  # population std
    min: np.ndarray
    max: np.ndarray
    abs_max: np.ndarray
    frac_zero: np.ndarray
    frac_sat: np.ndarray  # NaN where not a bounded activation
    frac_neg: np.ndarray  # share of negative elements (subsample)
    nonfinite: np.ndarray  # exact count; -1 = "at least one, count unknown"; 0 = none (exact)
    nan: np.ndarray  # exact counts where known, -1 where unknown
    posinf: np.ndarray
    neginf: np.ndarray


def finalize_summaries(
    rows: np.ndarray, layer_idx: np.ndarray, numel: np.ndarray, nlayers: int
) -> ActSummary:
    """Combine summary rows (one per call) into per-layer statistics.

    ``rows`` is ``(R, NFIELDS)`` from :func:`summarize`, ``layer_idx`` the layer of each row and
    ``numel`` its element count (known on the host, so never transferred).
    """
    L = nlayers
    idx = np.asarray(layer_idx, dtype=np.int64)
    r = np.asarray(rows, dtype=np.float64).reshape(-1, NFIELDS)

    def total(col: np.ndarray) -> np.ndarray:
        return np.bincount(idx, weights=col, minlength=L)

    n = np.bincount(idx, weights=np.asarray(numel, dtype=np.float64), minlength=L)
    seen = np.bincount(idx, minlength=L) > 0
    s = total(r[:, _F["sum"]])
    ss = total(r[:, _F["sumsq"]])
    sub_counts = np.minimum(np.asarray(numel, dtype=np.float64), HIST_SAMPLE)
    sub_n = total(sub_counts)
    sub_zero = sub_n - total(r[:, _F["sub_nonzero"]])
    mn = np.full(L, np.inf)
    mx = np.full(L, -np.inf)
    with np.errstate(invalid="ignore"):  # NaN propagates: a NaN anywhere makes the layer NaN
        np.minimum.at(mn, idx, r[:, _F["min"]])
        np.maximum.at(mx, idx, r[:, _F["max"]])
    sat_rows = r[:, _F["sub_sat"]] >= 0
    sat = total(np.where(sat_rows, r[:, _F["sub_sat"]], 0.0))
    sat_n = total(np.where(sat_rows, sub_counts, 0.0))
    has_sat = np.bincount(idx, weights=sat_rows.astype(np.float64), minlength=L) > 0
    exact_rows = r[:, _F["nan"]] >= 0
    exact = np.bincount(idx, weights=(~exact_rows).astype(np.float64), minlength=L) == 0
    nan_c = total(np.where(exact_rows, r[:, _F["nan"]], 0.0))
    pinf = total(np.where(exact_rows, r[:, _F["posinf"]], 0.0))
    ninf = total(np.where(exact_rows, r[:, _F["neginf"]], 0.0))
    out: dict[str, np.ndarray] = {}
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        nn_ = np.where(seen, n, np.nan)
        mean = s / nn_
        var = np.maximum(ss / nn_ - mean * mean, 0.0)
        out["mean"] = mean
        out["std"] = np.sqrt(var)
        out["min"] = np.where(seen, mn, np.nan)
        out["max"] = np.where(seen, mx, np.nan)
        out["abs_max"] = np.where(seen, np.maximum(np.abs(mn), np.abs(mx)), np.nan)
        out["frac_zero"] = np.where(seen, sub_zero / sub_n, np.nan)
        out["frac_sat"] = np.where(has_sat, sat / sat_n, np.nan)
        out["frac_neg"] = np.where(seen, total(r[:, _F["sub_neg"]]) / sub_n, np.nan)
    # Non-finite accounting: min/max are NaN (NaN present) or infinite (Inf present) exactly when
    # the layer held a non-finite value.  Counts are exact in exact mode, "-1 = unknown" otherwise.
    any_nf = seen & ~(np.isfinite(mn) & np.isfinite(mx))
    nonfinite = np.where(exact, nan_c + pinf + ninf, np.where(any_nf, -1.0, 0.0))
    nonfinite = np.where(seen, nonfinite, np.nan)
    unknown = -np.ones(L)
    return ActSummary(
        n=n,
        nonfinite=nonfinite,
        nan=np.where(exact & seen, nan_c, np.where(any_nf, unknown, 0.0)),
        posinf=np.where(exact & seen, pinf, np.where(any_nf, unknown, 0.0)),
        neginf=np.where(exact & seen, ninf, np.where(any_nf, unknown, 0.0)),
        **out,
    )


def scale_histograms(counts: np.ndarray, summary: ActSummary) -> np.ndarray:
    """Turn per-layer subsample counts ``(L, NBINS)`` into estimates of the full-tensor counts.

    The zero bin is set to the exact (or subsample-estimated) number of zeros.  The non-finite
    bins are exact in exact mode; otherwise a layer known to hold non-finite values shows at least
    one in the matching bin (from min/max: NaN min/max -> NaN bin, -Inf min -> -Inf bin, +Inf max
    -> +Inf bin), so a non-finite value is never dropped from a histogram.  Value bins are
    rescaled so that each row sums to the number of elements seen.
    """
    out = counts.astype(np.float64)
    n = summary.n
    special = np.array([NEG_INF, POS_INF, NAN])
    value_bins = np.ones(NBINS, bool)
    value_bins[special] = False
    value_bins[ZERO] = False
    with np.errstate(invalid="ignore", divide="ignore"):
        zeros = np.where(np.isfinite(summary.frac_zero), n * summary.frac_zero, 0.0)
        exact = summary.nonfinite >= 0
        nf_exact = np.stack([summary.neginf, summary.posinf, summary.nan], axis=1).clip(min=0)
        nf_est = out[:, special].copy()
        nan_mm = np.isnan(summary.min) | np.isnan(summary.max)
        nf_est[:, 2] = np.where(nan_mm, np.maximum(nf_est[:, 2], 1), nf_est[:, 2])
        nf_est[:, 0] = np.where(summary.min == -np.inf, np.maximum(nf_est[:, 0], 1), nf_est[:, 0])
        nf_est[:, 1] = np.where(summary.max == np.inf, np.maximum(nf_est[:, 1], 1), nf_est[:, 1])
        nf = np.where(exact[:, None], nf_exact, nf_est)
        sub_values = out[:, value_bins].sum(axis=1)
        target = np.maximum(n - zeros - nf.sum(axis=1), 0.0)
        scale = np.where(sub_values > 0, target / sub_values, 0.0)
    out[:, value_bins] *= scale[:, None]
    out[:, ZERO] = zeros
    out[:, special] = nf
    out[n == 0] = 0.0
    scaled: np.ndarray = np.nan_to_num(out, nan=0.0).astype(np.float32)
    return scaled


# --------------------------------------------------------------------------------------------
# Parameter statistics (fused over all parameters with the foreach kernels).
# --------------------------------------------------------------------------------------------
def _tensor_norm(t: Tensor) -> Tensor:
    """L2 norm of one tensor as a 0-d fp32 device tensor, whatever its layout.

    A sparse gradient (``nn.Embedding(sparse=True)``) is uncoalesced: its values can repeat an
    index, so they are summed per index first (``coalesce``) and the norm is exact.
    """
    if t.layout != torch.strided:
        if t.layout == torch.sparse_coo:
            t = t.coalesce().values()
        elif t.layout in (torch.sparse_csr, torch.sparse_csc, torch.sparse_bsr, torch.sparse_bsc):
            t = t.values()
        else:
            t = t.to_dense()
    r: Tensor = torch.linalg.vector_norm(t)
    return r if r.dtype == torch.float32 else r.float()


def foreach_norms(
    tensors: list[Tensor], failed: list[int] | None = None
) -> list[Tensor] | tuple[Tensor, ...]:
    """L2 norm of every tensor, each a 0-d fp32 device tensor (one fused kernel where possible).

    Tensors the fused kernel cannot take (sparse gradients, exotic types) are measured one by one
    (:func:`_tensor_norm`); one that cannot be measured at all gets ``-1`` ("not measured") and its
    index is appended to ``failed`` (when given; otherwise the error propagates).  One such tensor
    never costs the others their statistics.
    """
    res: list[Tensor] | tuple[Tensor, ...]
    if all(t.layout == torch.strided for t in tensors):
        try:
            res = torch._foreach_norm(tensors)
        except Exception:  # exotic tensor types: one by one below
            res = _one_by_one(tensors, failed)
    else:
        res = _one_by_one(tensors, failed)
    if all(r.dtype == torch.float32 for r in res):
        return res
    return [r.to(torch.float32) for r in res]


def _one_by_one(tensors: list[Tensor], failed: list[int] | None) -> list[Tensor]:
    dense = [j for j, t in enumerate(tensors) if t.layout == torch.strided]
    out: list[Tensor | None] = [None] * len(tensors)
    if dense:  # the strided ones still go through the fused kernel together when it takes them
        try:
            for j, r in zip(dense, torch._foreach_norm([tensors[j] for j in dense]), strict=True):
                out[j] = r
        except Exception:
            pass
    for j, t in enumerate(tensors):
        if out[j] is not None:
            continue
        try:
            out[j] = _tensor_norm(t)
        except Exception:
            if failed is None:
                raise
            failed.append(j)
            out[j] = _minus_one(t.device)
    return [r for r in out if r is not None]


def norms(tensors: list[Tensor]) -> Tensor:
    """L2 norms of a list of tensors as one fp32 device tensor (one fused kernel where possible).

    A tensor that cannot be measured counts as 0 (it is left out of a norm of the list)."""
    if not tensors:
        return torch.zeros(0)
    failed: list[int] = []
    out = torch.stack(list(foreach_norms(tensors, failed)))
    return out.clamp_min(0.0) if failed else out


def host_copy(t: Tensor) -> np.ndarray:
    """Copy a device tensor to a host numpy array (the probe's one transfer per sampled step)."""
    return t.detach().to("cpu").numpy()
