"""The balancing greedy over integer codes and numpy arrays (docs/dataset.md, Balancing).

`balance.plan_drops_table` feeds it one answer kind at a time. It drops what
`balance._greedy` (the dict-based reference over `_Kind`) drops, in the same order, but:

- State is arrays, not dicts: per (masked question, answer, video) cell its group, answer,
  video (kind-local integer codes), row count and guess sum; per answer its total; per
  group its credit. A carried row costs its share of a cell (~40 B) and transient sort
  keys while the cells are built, not ~1.4 KB of dicts.
- Gains are cached per candidate cell, and a drop recomputes only what it can change: its
  own group (every video's leave-one-video-out mode there, vectorized), and the credits
  that read the task-level prior (texts only one video asks: their videos' priors move
  with the answer totals), with the cells whose gain those feed.

How a group's gains come out of one pass over its cells (`_videos`): a video w's credit in
a group is read off o = T - c_w (the group's answer totals less its own rows): the answers
tied at the top of o (K, k of them) earn 1/k per row of w. Dropping a row of answer a from
another video v changes T by e_a and leaves w's credit unchanged unless a is in K (k >= 2:
k shrinks; k = 1: the runner-up at top - 1 may join). So the change is, per video, one
value X_w for every answer outside w's own at the top level (those are exactly the answers
with T == top), plus a value per own (w, a). Summing X_w by top level gives the change for
every answer at once, and the candidate (a, v) subtracts its own video's term. The same
pass over the task-level totals gives the fallback credits (prior) of single-video texts.
"""
from __future__ import annotations

from bisect import bisect_left, insort

import numpy as np

# Gains within this of the best are a tie, settled as the reference's scan settles it (the
# first in cell order whose gain beats the best so far by more than 1e-12).
_NEAR = 1e-9
_BLOCK = 256


def _ranges(starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """The concatenated aranges [starts[i], ends[i])."""
    lens = ends - starts
    total = int(lens.sum())
    if not total:
        return np.zeros(0, np.int64)
    keep = lens > 0
    starts, lens = starts[keep], lens[keep]
    off = np.repeat(starts - np.r_[0, np.cumsum(lens)[:-1]], lens)
    return np.arange(total, dtype=np.int64) + off


def _videos(T: np.ndarray, cntT: np.ndarray, lv: np.ndarray, ew: np.ndarray, eb: np.ndarray,
            ec: np.ndarray, cw: np.ndarray, cn: np.ndarray, cg: np.ndarray, ce: np.ndarray, nv: int):
    """Per-video credits and their changes under one fewer row of each answer.

    T: totals per answer; cntT[x]: answers whose total is x; lv: the positive totals there
    are, descending. Count entries (video ew, answer eb, rows ec > 0; one per pair) define
    each video's o = T - own; credit entries (video cw, rows cn, guess cg, count entry ce)
    earn cn x max(1/k if their answer is tied at the top of o else 0, cg).

    Returns (cred per video, per-row credit per credit entry, D per count entry: the video's
    credit less its credit with T[eb] one lower, Hx[x]: the sum of X_w over videos whose top
    is x (X_w: the same change for an answer outside the video's own at its top level),
    corr per count entry: what the entry adds to its answer's total change beyond Hx)."""
    Tb = T[eb]
    o = Tb - ec
    L = len(lv)
    # The highest total among answers that are not the video's own: the first level not
    # exhausted by the video's own answers (its own answers make up every answer there).
    mex = np.zeros(nv, np.int64)
    if L:
        rank = np.searchsorted(-lv, -Tb)
        j = 0
        while j < L:
            at = (rank == j) & (mex[ew] == j)
            if not at.any():
                break
            full = (mex == j) & (np.bincount(ew[at], minlength=nv) == cntT[lv[j]])
            if not full.any():
                break
            mex[full] += 1
            j += 1
        top_out = np.where(mex < L, lv[np.minimum(mex, L - 1)], 0)
    else:
        top_out = mex
    t = top_out.astype(np.int64)
    np.maximum.at(t, ew, o)
    te = t[ew]
    own_t = np.bincount(ew, weights=(o == te) & (te > 0), minlength=nv)
    m_t = np.bincount(ew, weights=Tb == te, minlength=nv)
    k = np.where(t > 0, cntT[t] - m_t + own_t, 0).astype(np.int64)
    t1 = np.maximum(t - 1, 0)
    own_t1 = np.bincount(ew, weights=(o == te - 1) & (te >= 2), minlength=nv)
    m_t1 = np.bincount(ew, weights=(Tb == te - 1) & (te >= 2), minlength=nv)
    nb2 = np.where(t >= 2, cntT[t1] - m_t1 + own_t1, 0)

    tc, kc, oc, nb2c = t[cw], k[cw], o[ce], nb2[cw]
    inside = (oc == tc) & (tc > 0)
    runner = (oc == tc - 1) & (tc >= 2)
    kk = np.maximum(kc, 1)
    zero = np.maximum(0.0, cg)
    pr = np.where(kc > 0, np.maximum(inside / kk, cg), zero)
    cred = np.bincount(cw, weights=cn * pr, minlength=nv)
    km1 = np.maximum(kc - 1, 1)
    x2 = cred - np.bincount(cw, weights=cn * np.maximum(inside / km1, cg), minlength=nv)
    x1 = cred - np.bincount(cw, weights=cn * np.maximum(runner / (1 + nb2c), cg), minlength=nv)
    X = np.where(k >= 2, x2, np.where((k == 1) & (own_t == 0) & (nb2 >= 1), x1, 0.0))
    # Own answer a at the top: k >= 2, a leaves the tie; k = 1, the runners-up join it (or,
    # at a top of 1, nothing positive is left).
    extra = np.bincount(ce, weights=cn * (np.maximum(1.0 / km1, cg) - zero), minlength=len(ew))
    y1 = cred - np.bincount(cw, weights=cn * np.maximum((inside | runner) / (1 + nb2c), cg), minlength=nv)
    y0 = cred - np.bincount(cw, weights=cn * zero, minlength=nv)
    ke, n2e = k[ew], nb2[ew]
    D = np.where((o == te) & (te > 0),
                 np.where(ke >= 2, X[ew] + extra,
                          np.where(ke == 1, np.where(n2e >= 1, y1[ew], np.where(te == 1, y0[ew], 0.0)), 0.0)),
                 0.0)
    pos = t > 0
    Hx = np.bincount(t[pos], weights=X[pos], minlength=len(cntT)).astype(float)
    corr = D - np.where((Tb == te) & (te > 0), X[ew], 0.0)
    return cred, pr, D, Hx, corr


class KindGreedy:
    """One answer kind's greedy (module doc). Rows come in sample_id order as codes:
    `q` masked question (group, numbered by first appearance), `a` answer rank (string
    order), `v` video rank (name order), `inv` 1 / choices, `pool_order` per droppable row
    its tie order (rows of a cell go smallest first), `droppable`."""

    def __init__(self, q, a, v, inv, droppable, pool_order, max_excess: float):
        self.max_excess = max_excess
        nr = len(q)
        # Cells in the reference's scan order: group, answer, video.
        srt = np.lexsort((v, a, q))
        qs, as_, vs = q[srt], a[srt], v[srt]
        new = np.r_[True, (qs[1:] != qs[:-1]) | (as_[1:] != as_[:-1]) | (vs[1:] != vs[:-1])]
        cell_of_sorted = np.cumsum(new) - 1
        first = np.flatnonzero(new)
        self.nc = nc = len(first)
        cell = np.empty(nr, np.int64)
        cell[srt] = cell_of_sorted
        del srt, cell_of_sorted
        self.cq = qs[first].astype(np.int32)
        self.cv = vs[first].astype(np.int32)
        cell_answer = as_[first]
        del qs, as_, vs
        # Kind-local answer codes (a is a rank: compact it).
        ua, self.ca = np.unique(cell_answer, return_inverse=True)
        self.ca = self.ca.astype(np.int32)
        self.na = len(ua)
        del ua, cell_answer
        self.n = np.bincount(cell, minlength=nc).astype(np.int64)
        # Guess sums added one row at a time in sample_id order, as the reference adds them.
        self.gs = np.bincount(cell, weights=inv, minlength=nc)
        self.tot = np.bincount(self.ca, weights=self.n, minlength=self.na).astype(np.int64)
        self.chance_sum = float(np.cumsum(inv)[-1]) if nr else 0.0
        self.rows = nr
        # Groups: contiguous ranges of cells.
        ng = int(self.cq.max()) + 1 if nc else 0
        self.gstart = np.searchsorted(self.cq, np.arange(ng + 1))
        self.ng = ng
        # Group-local answer and video indices.
        gpair = np.r_[True, (self.cq[1:] != self.cq[:-1]) | (self.ca[1:] != self.ca[:-1])] if nc else np.zeros(0, bool)
        pid = np.cumsum(gpair) - 1
        self.la = (pid - pid[self.gstart[:-1]][self.cq]).astype(np.int32) if nc else pid
        self.gna = (np.bincount(self.cq, weights=gpair, minlength=ng)).astype(np.int64)
        key = (self.cq.astype(np.int64) << 32) | self.cv.astype(np.int64)
        ukey, vinv = np.unique(key, return_inverse=True)
        ug = (ukey >> 32).astype(np.int64)
        gfirst = np.searchsorted(ug, np.arange(ng))
        self.lvid = (vinv - gfirst[self.cq]).astype(np.int32)
        self.gnv = np.bincount(ug, minlength=ng).astype(np.int64)
        del key, ukey, vinv, ug, gfirst, pid, gpair
        # Cells by video (the prior reads a video's answers over the whole kind).
        self.by_video = np.argsort(self.cv, kind="stable").astype(np.int32)
        nvk = int(self.cv.max()) + 1 if nc else 0
        self.vstart = np.searchsorted(self.cv[self.by_video], np.arange(nvk + 1))
        # Pools: droppable rows per cell, the one to go first last.
        drows = np.flatnonzero(droppable)
        # cell ascending, tie order descending (equal orders: the later row last, as a
        # stable reverse sort leaves them)
        by = np.argsort(pool_order, kind="stable")
        po = pool_order[by]
        rank = np.empty(len(drows), np.int64)
        rank[by] = np.cumsum(np.r_[True, po[1:] != po[:-1]]) - 1 if len(po) else by
        del by, po
        prow = drows[np.lexsort((-rank, cell[drows]))]
        self.prow = prow
        self.pcell = cell[prow]
        self.pinv = inv[prow]
        self.pend = np.searchsorted(self.pcell, np.arange(nc), side="right").astype(np.int32)
        self.pstart = np.searchsorted(self.pcell, np.arange(nc), side="left").astype(np.int32)
        del self.pcell
        del cell, drows, rank
        # Candidates: cells with droppable rows, in scan order.
        self.cand = np.flatnonzero(self.pend > self.pstart)
        self.own = np.zeros(nc)               # credit lost with one row of the cell (own group)
        self.gcredit = np.zeros(ng)           # credit of multi-video groups
        self.single = np.zeros(ng, bool)      # groups at most one video asks (fallback)
        self.special: dict[int, np.ndarray] = {}   # 2-video groups: cells whose drop leaves one video
        # Task-level answer totals by level (the prior's mode).
        self.cnt_tot = np.bincount(self.tot, minlength=2).astype(np.int64)
        self.levels = sorted(int(x) for x in np.flatnonzero(self.cnt_tot[1:]) + 1)
        self.fb_total = 0.0
        self.F = None                          # per answer: the prior's change (None: no prior)
        self.Dp = np.zeros(nc)                 # per cell: its video's own term of F
        self._dp_idx = np.zeros(0, np.int64)
        for g in range(ng):
            self._group(g)
        self._prior()
        self._special()
        self.gain = np.full(len(self.cand), -np.inf)
        self.bmax = np.full((len(self.cand) + _BLOCK - 1) // _BLOCK, -np.inf)
        self._gains(None)

    # --- credits -------------------------------------------------------------------------
    def _group(self, g: int) -> None:
        """Recompute group g: whether one video asks it, its credit and its cells' own part."""
        s, e = int(self.gstart[g]), int(self.gstart[g + 1])
        idx = np.arange(s, e)[self.n[s:e] > 0]
        self.special.pop(g, None)
        ew = self.lvid[idx].astype(np.int64)
        per_video = np.bincount(ew, weights=self.n[idx], minlength=int(self.gnv[g]))
        videos = int(np.count_nonzero(per_video))
        if videos <= 1:
            self.single[g] = True
            self.gcredit[g] = 0.0          # counted with the prior (self.fb_total)
            return
        eb = self.la[idx].astype(np.int64)
        ec = self.n[idx]
        T = np.bincount(eb, weights=ec, minlength=int(self.gna[g])).astype(np.int64)
        cntT = np.bincount(T, minlength=2).astype(np.int64)
        lv = (np.flatnonzero(cntT[1:]) + 1)[::-1]
        nvg = int(self.gnv[g])
        cred, pr, D, Hx, corr = _videos(T, cntT, lv, ew, eb, ec, ew, ec.astype(float), np.zeros(len(idx)),
                                        np.arange(len(idx)), nvg)
        self.gcredit[g] = cred.sum()
        total = Hx[T] + np.bincount(eb, weights=corr, minlength=len(T))
        self.own[idx] = pr + total[eb] - D
        if videos == 2:
            lone = idx[per_video[ew] == 1]
            if len(lone):
                self.special[g] = lone

    def _own_prior(self, w: int, minus: int | None) -> dict[int, float]:
        """The prior's credit per own answer of video w with the answer totals less one row
        of `minus` (a row of another video), as _Kind.prior_credit reads it."""
        cells = self.by_video[self.vstart[w]:self.vstart[w + 1]]
        cells = cells[self.n[cells] > 0]
        own: dict[int, int] = {}
        for c, m in zip(self.ca[cells].tolist(), self.n[cells].tolist()):
            own[c] = own.get(c, 0) + m
        keys = set(own) | ({minus} if minus is not None else set())
        o = {b: int(self.tot[b]) - own.get(b, 0) - (b == minus) for b in keys}
        at: dict[int, int] = {}
        for b in keys:
            x = int(self.tot[b])
            at[x] = at.get(x, 0) + 1
        top_out = 0
        for x in reversed(self.levels):
            if self.cnt_tot[x] > at.get(x, 0):
                top_out = x
                break
        t = max([top_out] + list(o.values()))
        if t <= 0:
            return {b: 0.0 for b in own}
        k = int(self.cnt_tot[t]) - at.get(t, 0) + sum(1 for b in keys if o[b] == t)
        return {b: (1.0 / k if o[b] == t else 0.0) for b in own}

    def _special(self) -> None:
        """Own part of the cells whose drop leaves their 2-video group to one video: the
        other video's rows fall back to the prior (less that row) or their guess."""
        for g, lone in self.special.items():
            s, e = int(self.gstart[g]), int(self.gstart[g + 1])
            idx = np.arange(s, e)[self.n[s:e] > 0]
            for c in lone.tolist():
                v, a = int(self.cv[c]), int(self.ca[c])
                rest = idx[self.cv[idx] != v]
                w = int(self.cv[rest[0]])
                prior = self._own_prior(w, a)
                trial = 0.0
                for r in rest.tolist():
                    trial += int(self.n[r]) * max(prior[int(self.ca[r])], self.gs[r] / self.n[r])
                self.own[c] = self.gcredit[g] - trial

    def _prior(self) -> None:
        """The fallback credits (groups one video asks) and the change of each under one row
        fewer of each answer elsewhere: F per answer, Dp per cell (its video's term)."""
        groups = np.flatnonzero(self.single)
        if not len(groups):
            self.fb_total, self.F = 0.0, None
            return
        fcells = _ranges(self.gstart[groups], self.gstart[groups + 1])
        fcells = fcells[self.n[fcells] > 0]
        if not len(fcells):
            self.fb_total, self.F = 0.0, None
            return
        vids, cw = np.unique(self.cv[fcells], return_inverse=True)
        nv = len(vids)
        ocells = _ranges(self.vstart[vids], self.vstart[vids + 1])
        ocells = self.by_video[ocells]
        ocells = ocells[self.n[ocells] > 0]
        ow = np.searchsorted(vids, self.cv[ocells])
        okey = ow.astype(np.int64) * self.na + self.ca[ocells]
        ukey, oinv = np.unique(okey, return_inverse=True)
        ec = np.bincount(oinv, weights=self.n[ocells]).astype(np.int64)
        ew, eb = ukey // self.na, ukey % self.na
        ce = np.searchsorted(ukey, cw.astype(np.int64) * self.na + self.ca[fcells])
        cn = self.n[fcells].astype(float)
        cg = self.gs[fcells] / self.n[fcells]
        lv = np.array(self.levels[::-1], np.int64)
        cred, pr, D, Hx, corr = _videos(self.tot, self.cnt_tot, lv, ew, eb, ec, cw, cn, cg, ce, nv)
        self.fb_total = float(cred.sum())
        self.own[fcells] = pr
        # F(a) = Hx[tot[a]] + the entries' corrections of answer a (sparse).
        ans, ainv = np.unique(eb, return_inverse=True)
        self.F = (Hx, ans, np.bincount(ainv, weights=corr))
        # Dp for every cell of the fallback videos: its (video, answer)'s D.
        self.Dp[self._dp_idx] = 0.0
        self.Dp[ocells] = D[oinv]
        self._dp_idx = ocells

    # --- choosing ------------------------------------------------------------------------
    def _gains(self, span: tuple[int, int] | None) -> None:
        """Gains of candidates (all, or those in the candidate positions span)."""
        lo, hi = (0, len(self.cand)) if span is None else span
        if hi <= lo:
            return
        c = self.cand[lo:hi]
        last = self.pend[c] - 1
        live = (self.n[c] > 0) & (self.pend[c] > self.pstart[c])
        g = self.own[c] - self.pinv[np.maximum(last, 0)] - self.max_excess
        if self.F is not None:
            Hx, ans, add = self.F
            a = self.ca[c]
            f = Hx[self.tot[a]]
            at = np.minimum(np.searchsorted(ans, a), len(ans) - 1)
            hit = ans[at] == a
            f[hit] += add[at[hit]]
            g = g + f - self.Dp[c]
        self.gain[lo:hi] = np.where(live, g, -np.inf)
        b0, b1 = lo // _BLOCK, (hi - 1) // _BLOCK + 1
        part = self.gain[b0 * _BLOCK:min(b1 * _BLOCK, len(self.gain))]
        pad = (-len(part)) % _BLOCK
        if pad:
            part = np.r_[part, np.full(pad, -np.inf)]
        self.bmax[b0:b1] = part.reshape(-1, _BLOCK).max(1)

    def _best(self) -> int | None:
        if not len(self.bmax):
            return None
        top = float(self.bmax.max())
        if not top > 1e-12:
            return None
        near = np.concatenate([np.flatnonzero(self.gain[b * _BLOCK:(b + 1) * _BLOCK] >= top - _NEAR) + b * _BLOCK
                               for b in np.flatnonzero(self.bmax >= top - _NEAR).tolist()])
        values = self.gain[near]
        if float(values.min()) > top - 1e-12:
            return int(self.cand[near[0]])     # interchangeable cells: the scan keeps the first
        best_gain, best = 0.0, None
        for i, g in zip(near.tolist(), values.tolist()):
            if g > best_gain + 1e-12:
                best_gain, best = g, i
        return None if best is None else int(self.cand[best])

    def excess(self) -> float:
        return float(self.gcredit.sum()) + self.fb_total - self.chance_sum - self.max_excess * self.rows

    def run(self) -> list[int]:
        """The rows dropped (positions in the rows given), in the order dropped."""
        out: list[int] = []
        while self.excess() > 1e-9:
            c = self._best()
            if c is None:
                break            # only non-droppable rows left to drop: the target is not met
            self.pend[c] -= 1
            row = int(self.prow[self.pend[c]])
            inv = float(self.pinv[self.pend[c]])
            out.append(row)
            self.n[c] -= 1
            self.gs[c] -= inv
            if not self.n[c]:
                self.gs[c] = 0.0
            a = int(self.ca[c])
            x = int(self.tot[a])
            self.tot[a] = x - 1
            self.cnt_tot[x] -= 1
            if not self.cnt_tot[x]:
                self.levels.pop(bisect_left(self.levels, x))
            if x - 1 > 0:
                self.cnt_tot[x - 1] += 1
                if self.cnt_tot[x - 1] == 1:
                    insort(self.levels, x - 1)
            else:
                self.cnt_tot[0] += 1
            self.chance_sum -= inv
            self.rows -= 1
            g = int(self.cq[c])
            self._group(g)
            self._prior()
            self._special()
            if self.F is None and not self.special:
                s, e = int(self.gstart[g]), int(self.gstart[g + 1])
                self._gains((int(np.searchsorted(self.cand, s)), int(np.searchsorted(self.cand, e))))
            else:
                self._gains(None)
        return out
