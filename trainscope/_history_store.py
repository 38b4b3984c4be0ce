"""The bounded series of the history: :class:`Downsampled` keeps a time series of fixed-shape
items in fixed memory (recent points raw in a ring, older ones folded into min / max / mean buckets
that merge pairwise when full).  See :mod:`trainscope.history` for the capacities."""

from __future__ import annotations

from typing import Any

import numpy as np


class Downsampled:
    """A bounded time series of fixed-shape items: recent points raw, older ones bucketed.

    Parameters
    ----------
    shape
        Shape of one item (``()`` for a scalar series).
    recent
        Points kept at full resolution.
    buckets
        Number of buckets for older points (even).  Each bucket stores min, max and mean of the
        points it covers (mean only if ``extrema=False``) and the first / last step covered.
    """

    def __init__(
        self,
        shape: tuple[int, ...] = (),
        *,
        recent: int = 4096,
        buckets: int = 1024,
        extrema: bool = True,
        dtype: Any = np.float32,
    ) -> None:
        if recent < 1 or buckets < 2 or buckets % 2:
            raise ValueError("recent must be >= 1 and buckets an even number >= 2")
        self.shape = shape
        self.extrema = extrema
        self._r_steps = np.zeros(recent, np.int64)
        self._r_vals = np.zeros((recent, *shape), dtype)
        self._r_len = 0
        self._r_head = 0  # index of the oldest point
        self._b_first = np.zeros(buckets, np.int64)
        self._b_last = np.zeros(buckets, np.int64)
        self._b_count = np.zeros(buckets, np.int64)
        self._b_sum = np.zeros((buckets, *shape), np.float64 if shape == () else dtype)
        self._b_min = np.zeros((buckets, *shape), dtype) if extrema else None
        self._b_max = np.zeros((buckets, *shape), dtype) if extrema else None
        self._b_len = 0  # closed buckets
        self._width = 1  # points per closed bucket
        self._open_n = 0  # points in the open (last) bucket, which lives at index _b_len
        self.total = 0  # points ever appended

    def __len__(self) -> int:
        return self._b_len + (1 if self._open_n else 0) + self._r_len

    @property
    def nbytes(self) -> int:
        arrays = [
            self._r_steps,
            self._r_vals,
            self._b_first,
            self._b_last,
            self._b_count,
            self._b_sum,
        ]
        arrays += [a for a in (self._b_min, self._b_max) if a is not None]
        return sum(a.nbytes for a in arrays)

    def append(self, step: int, value: Any) -> None:
        cap = len(self._r_steps)
        if self._r_len == cap:  # evict the oldest recent point into the buckets
            self._to_bucket(int(self._r_steps[self._r_head]), self._r_vals[self._r_head])
            self._r_head = (self._r_head + 1) % cap
            self._r_len -= 1
        j = (self._r_head + self._r_len) % cap
        self._r_steps[j] = step
        self._r_vals[j] = value
        self._r_len += 1
        self.total += 1

    def extend(self, steps: np.ndarray, values: np.ndarray) -> None:
        """Append many points at once (same result as :meth:`append` one by one, vectorized)."""
        steps = np.asarray(steps, dtype=np.int64)
        values = np.asarray(values, dtype=self._r_vals.dtype).reshape((len(steps), *self.shape))
        n = len(steps)
        cap = len(self._r_steps)
        if n == 0:
            return
        if n < 8:
            for k, v in zip(steps, values, strict=True):
                self.append(int(k), v)
            return
        # points that fall out of the ring: the oldest stored ones first, then the oldest new ones
        overflow = self._r_len + n - cap
        if overflow > 0:
            old_take = min(overflow, self._r_len)
            order = self._recent_order()
            ev_steps = [self._r_steps[order[:old_take]]]
            ev_vals = [self._r_vals[order[:old_take]]]
            new_take = overflow - old_take
            if new_take:
                ev_steps.append(steps[:new_take])
                ev_vals.append(values[:new_take])
                steps, values = steps[new_take:], values[new_take:]
            keep = order[old_take:]
            kept_steps = self._r_steps[keep].copy()
            kept_vals = self._r_vals[keep].copy()
            self._to_buckets(np.concatenate(ev_steps), np.concatenate(ev_vals))
            self._r_steps[: len(keep)] = kept_steps
            self._r_vals[: len(keep)] = kept_vals
            self._r_head, self._r_len = 0, len(keep)
        m = len(steps)
        idx = (self._r_head + self._r_len + np.arange(m)) % cap
        self._r_steps[idx] = steps
        self._r_vals[idx] = values
        self._r_len += m
        self.total += n

    def _to_buckets(self, steps: np.ndarray, values: np.ndarray) -> None:
        i = 0
        n = len(steps)
        while i < n:
            if self._open_n or n - i < self._width:  # fill the open bucket point by point
                self._to_bucket(int(steps[i]), values[i])
                i += 1
                continue
            # whole buckets of the current width at once, until the bucket array is full
            room = len(self._b_first) - self._b_len
            nb = min((n - i) // self._width, room)
            w = self._width
            blk = values[i : i + nb * w].reshape((nb, w, *self.shape))
            j = self._b_len
            self._b_first[j : j + nb] = steps[i : i + nb * w : w]
            self._b_last[j : j + nb] = steps[i + w - 1 : i + nb * w : w]
            self._b_count[j : j + nb] = w
            self._b_sum[j : j + nb] = blk.sum(axis=1, dtype=self._b_sum.dtype)
            if self._b_min is not None and self._b_max is not None:
                self._b_min[j : j + nb] = blk.min(axis=1)
                self._b_max[j : j + nb] = blk.max(axis=1)
            self._b_len += nb
            i += nb * w
            if self._b_len == len(self._b_first):
                self._merge_pairs()

    def _to_bucket(self, step: int, value: np.ndarray) -> None:
        i = self._b_len
        if self._open_n == 0:
            self._b_first[i] = step
            self._b_sum[i] = value
            if self._b_min is not None and self._b_max is not None:
                self._b_min[i] = value
                self._b_max[i] = value
        else:
            self._b_sum[i] += value
            if self._b_min is not None and self._b_max is not None:
                self._b_min[i] = np.minimum(self._b_min[i], value)
                self._b_max[i] = np.maximum(self._b_max[i], value)
        self._b_last[i] = step
        self._open_n += 1
        self._b_count[i] = self._open_n
        if self._open_n == self._width:  # close it
            self._b_len += 1
            self._open_n = 0
            if self._b_len == len(self._b_first):
                self._merge_pairs()

    def _merge_pairs(self) -> None:
        n = self._b_len
        h = n // 2
        self._b_first[:h] = self._b_first[0:n:2]
        self._b_last[:h] = self._b_last[1:n:2]
        self._b_count[:h] = self._b_count[0:n:2] + self._b_count[1:n:2]
        self._b_sum[:h] = self._b_sum[0:n:2] + self._b_sum[1:n:2]
        if self._b_min is not None and self._b_max is not None:
            self._b_min[:h] = np.minimum(self._b_min[0:n:2], self._b_min[1:n:2])
            self._b_max[:h] = np.maximum(self._b_max[0:n:2], self._b_max[1:n:2])
        self._b_len = h
        self._width *= 2

    def _recent_order(self) -> np.ndarray:
        cap = len(self._r_steps)
        return (self._r_head + np.arange(self._r_len)) % cap

    def arrays(self) -> dict[str, np.ndarray]:
        """Everything, oldest first: ``step`` (float64: a bucket's mean step), ``mean``, ``min``,
        ``max`` (same as ``mean`` for raw points), ``first`` / ``last`` steps and ``count``."""
        nb = self._b_len + (1 if self._open_n else 0)
        order = self._recent_order()
        cnt = self._b_count[:nb].astype(np.float64)
        bshape = (nb,) + (1,) * len(self.shape)
        b_mean = (self._b_sum[:nb] / cnt.reshape(bshape)).astype(self._r_vals.dtype)
        r_vals = self._r_vals[order]
        r_steps = self._r_steps[order]
        mean = np.concatenate([b_mean, r_vals])
        if self._b_min is not None and self._b_max is not None:
            lo = np.concatenate([self._b_min[:nb], r_vals])
            hi = np.concatenate([self._b_max[:nb], r_vals])
        else:
            lo = hi = mean
        first = np.concatenate([self._b_first[:nb], r_steps])
        last = np.concatenate([self._b_last[:nb], r_steps])
        return {
            "step": (first + last) / 2.0,
            "mean": mean,
            "min": lo,
            "max": hi,
            "first": first,
            "last": last,
            "count": np.concatenate([self._b_count[:nb], np.ones(len(order), np.int64)]),
        }

    def item_arrays(self, index: int) -> dict[str, np.ndarray]:
        """:meth:`arrays` of entry ``index`` along the first item axis only (e.g. one layer of a
        ``(L, ...)`` series), without copying the others."""
        nb = self._b_len + (1 if self._open_n else 0)
        order = self._recent_order()
        cnt = self._b_count[:nb].astype(np.float64)
        b_sum = self._b_sum[:nb, index]
        b_mean = (b_sum / cnt.reshape((nb,) + (1,) * (b_sum.ndim - 1))).astype(self._r_vals.dtype)
        r_vals = self._r_vals[order, index]
        r_steps = self._r_steps[order]
        mean = np.concatenate([b_mean, r_vals])
        if self._b_min is not None and self._b_max is not None:
            lo = np.concatenate([self._b_min[:nb, index], r_vals])
            hi = np.concatenate([self._b_max[:nb, index], r_vals])
        else:
            lo = hi = mean
        first = np.concatenate([self._b_first[:nb], r_steps])
        last = np.concatenate([self._b_last[:nb], r_steps])
        count = np.concatenate([self._b_count[:nb], np.ones(len(order), np.int64)])
        return {
            "step": (first + last) / 2.0,
            "mean": mean,
            "min": lo,
            "max": hi,
            "first": first,
            "last": last,
            "count": count,
        }

    def last(self, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` most recent raw points (steps, values), oldest first."""
        order = self._recent_order()[-k:] if k > 0 else self._recent_order()[:0]
        return self._r_steps[order], self._r_vals[order]

    # ------------------------------------------------------------ persistence (run directory)
    def state_dict(self) -> dict[str, Any]:
        """The exact state as numpy arrays and ints (used points only, oldest first)."""
        nb = self._b_len + (1 if self._open_n else 0)
        order = self._recent_order()
        state: dict[str, Any] = {
            "shape": list(self.shape),
            "extrema": self.extrema,
            "dtype": str(self._r_vals.dtype),
            "recent": len(self._r_steps),
            "buckets": len(self._b_first),
            "b_len": self._b_len,
            "width": self._width,
            "open_n": self._open_n,
            "total": self.total,
            "r_steps": self._r_steps[order],
            "r_vals": self._r_vals[order],
        }
        for key in ("b_first", "b_last", "b_count", "b_sum", "b_min", "b_max"):
            arr = getattr(self, f"_{key}")
            if arr is not None:
                state[key] = arr[:nb].copy()
        return state

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Downsampled:
        """Rebuild a series saved by :meth:`state_dict` (appending continues exactly as before)."""
        d = cls(
            tuple(int(x) for x in state["shape"]),
            recent=int(state["recent"]),
            buckets=int(state["buckets"]),
            extrema=bool(state["extrema"]),
            dtype=np.dtype(str(state["dtype"])),
        )
        n = len(state["r_steps"])
        d._r_steps[:n] = state["r_steps"]
        d._r_vals[:n] = state["r_vals"]
        d._r_len, d._r_head = n, 0
        nb = len(state["b_first"])
        for key in ("b_first", "b_last", "b_count", "b_sum", "b_min", "b_max"):
            arr = getattr(d, f"_{key}")
            if arr is not None:
                arr[:nb] = state[key]
        d._b_len, d._width = int(state["b_len"]), int(state["width"])
        d._open_n, d.total = int(state["open_n"]), int(state["total"])
        return d
