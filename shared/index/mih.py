"""Exact k-nearest-neighbour search in Hamming space by multi-index hashing.

Norouzi, Punjani & Fleet, "Fast Exact Search in Hamming Space with Multi-Index Hashing"
(TPAMI 2014). Each code is cut into m disjoint substrings of 8 or 16 bits; table j maps the
value of substring j to the codes that have it (direct-addressed buckets: CSR offsets + ids).
Pigeonhole: a code within Hamming distance r of the query is within ``r // m`` of it in at
least one substring. The search probes, round by round (ρ = 0, 1, 2, ...), every bucket whose
key differs from the query's substring in exactly ρ bits, in every table, and verifies each
code it finds with the full distance. After round ρ every code within distance
``m·(ρ + 1) − 1`` has been seen (a code not seen differs in more than ρ bits in *every*
substring), so the search stops as soon as the k-th best distance is at most that: then every
code at that distance, ties included, is among the verified ones, and the result is exactly
the flat scan's.

Real hash codes cluster: thousands of slices of one class share a code. The tables therefore
index *distinct* codes, and each distinct code keeps its members (slice ids, ascending):
a query verifies a cluster once, not once per member, and the k results are the k smallest
(distance, id) pairs drawn from the members of the nearest distinct codes.

Deletions (ids a newer delta hides) do not change the tables: a :class:`Liveness` per
generation says how many members of each distinct code are still live and which members are
hidden, so a refresh costs O(hidden), not O(n).

Uniform random codes (the worst case) spread over all buckets, and the radius the search must
reach can make the probes cost more than a sequential scan. :meth:`MultiIndexHash.search`
therefore estimates before each round what finishing would cost (the probes of this round, and
for the rounds the current k-th distance still requires, their probe count times the mean
bucket occupancy) and gives up, returning None, when that plus what it has spent exceeds the
caller's budget (the cost of the flat scan): the caller then scans. The cost constants below
are nanoseconds measured on the 2-core development box (docs/benchmarks.md, Search); only
their ratios matter.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from itertools import combinations
from math import comb

import numpy as np

FLAT_NS_PER_CODE = 0.5
FLAT_NS_PER_BYTE = 0.02
"""faiss ``IndexBinaryFlat``'s single-thread scan per code: ~0.58 ns for 32-bit codes,
~0.66 ns for 64-bit ones (1M codes, p50 of single queries)."""
FLAT_NS_FIXED = 20_000.0
"""A flat search's fixed cost per query (calls, id mapping, result lists)."""
MIH_NS_QUERY = 20_000.0
"""Fixed cost of one multi-index query: key extraction, result assembly, Python calls."""
MIH_NS_ROUND = 25_000.0
"""Fixed cost of one probing round (a dozen NumPy calls)."""
MIH_NS_PROBE = 10.0
"""Per probed bucket: two offset loads and its share of the range expansion."""
MIH_NS_VERIFY = 30.0
"""Per candidate: gather of its distinct code, XOR, popcount, filter, sort-merge."""

BALL_NS_STEP = 8_000.0
"""Fixed cost of one step of exact look-ups."""
BALL_NS_LOOKUP = 30.0
"""Per look-up: XOR, a binary search among the distinct codes, compare."""
BALL_MAX_LOOKUPS = 50_000
"""Look-up steps larger than this are never offered (their masks are cached per radius)."""

UNIFORM_MARGIN = 0.8
"""A query that looks uniform is scanned unless reaching the expected radius is estimated at
most this fraction of the scan (the estimate is rough; near break-even the scan is surer)."""

SMALL_TABLE_BELOW = 4096

_LOW32 = np.int64(0xFFFFFFFF)
"""Distinct codes below which 8-bit substrings are used (16-bit tables would be mostly empty)."""


def flat_cost_ns(codes: int, nbytes: int) -> float:
    """Estimated time of the flat scan of ``codes`` codes for one query: the budget a
    multi-index search must beat."""
    return FLAT_NS_FIXED + (FLAT_NS_PER_CODE + FLAT_NS_PER_BYTE * nbytes) * codes


@cache
def _masks(width: int, flips: int) -> np.ndarray:
    """Every ``width``-bit value with exactly ``flips`` bits set, ascending (uint32)."""
    values = np.arange(1 << width, dtype=np.uint32)
    return values[np.bitwise_count(values) == flips]


@cache
def _ball_masks(bits: int, distance: int) -> np.ndarray:
    """Every ``bits``-bit uint64 word with exactly ``distance`` bits set."""
    if distance == 0:
        return np.zeros(1, dtype=np.uint64)
    positions = np.array(list(combinations(range(bits), distance)), dtype=np.uint64)
    return np.bitwise_or.reduce(np.uint64(1) << positions, axis=1, initial=np.uint64(0))


@cache
def _uniform_kth_distance(bits: int, codes: int, k: int) -> int:
    """The distance within which ``codes`` uniform random codes put ``k`` of them around a
    query, in expectation: the smallest d with codes * P(distance <= d) >= k."""
    reached = 0.0
    for distance in range(bits + 1):
        reached += codes * comb(bits, distance) / 2.0**bits
        if reached >= k:
            return distance
    return bits


def _count(stats: dict[str, int] | None, key: str, value: int) -> None:
    if stats is not None:
        stats[key] = stats.get(key, 0) + value


def _index_dtype(n: int) -> type[np.signedinteger]:
    return np.int32 if n < 2**31 - 1 else np.int64


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(s, s + l)`` for every (s, l): the CSR gather, vectorised."""
    ends = np.cumsum(lengths)
    total = int(ends[-1]) if len(ends) else 0
    if total == 0:
        return np.empty(0, dtype=np.int64)
    return np.arange(total) + np.repeat(starts - ends + lengths, lengths)


def _in_sorted(values: np.ndarray, sorted_array: np.ndarray) -> np.ndarray:
    """Membership of each value in an ascending array (np.isin would sort both again)."""
    if not sorted_array.size:
        return np.zeros(len(values), dtype=bool)
    slots = np.minimum(np.searchsorted(sorted_array, values), len(sorted_array) - 1)
    return sorted_array[slots] == values


def _words(codes: np.ndarray) -> np.ndarray:
    """Packed codes as little-endian uint64 words ``(n, ceil(nbytes / 8))``, zero-padded:
    the unit of the verification's XOR + popcount."""
    n, nbytes = codes.shape
    width = -(-nbytes // 8)
    padded = np.zeros((n, width * 8), dtype=np.uint8)
    padded[:, :nbytes] = codes
    return padded.view("<u8")


@dataclass(frozen=True)
class Liveness:
    """Which members of a :class:`MultiIndexHash` one generation still sees."""

    live: int  # live codes in total
    live_counts: np.ndarray | None  # live members per distinct code; None: all live
    dead_members: np.ndarray  # member positions of hidden codes, ascending


class MultiIndexHash:
    """An immutable multi-index hash over ``(ids, codes)``; exact top-k by (distance, id).

    ``ids`` must be unique (slice ids); ``codes`` are packed bits, ``(n, nbytes)`` uint8, any
    whole number of bytes. A code's *position* is its row in the arrays given here; hidden
    codes are named by position (:meth:`liveness`).
    """

    def __init__(self, ids: np.ndarray, codes: np.ndarray, substring_bits: int | None = None
                 ) -> None:
        n, nbytes = codes.shape
        if len(ids) != n:
            raise ValueError(f"{len(ids)} ids but {n} codes")
        if substring_bits not in (None, 8, 16):
            raise ValueError(f"substring_bits must be 8 or 16, not {substring_bits!r}")
        self.size = n
        self.nbytes = nbytes
        self.bits = 8 * nbytes
        index = _index_dtype(n)
        words = _words(codes)
        # One sort groups equal codes and orders each group's members by id.
        order = np.lexsort((ids, *(words[:, w] for w in reversed(range(words.shape[1])))))
        sorted_words = words[order]
        if n:
            first = np.flatnonzero(np.concatenate(
                [[True], np.any(sorted_words[1:] != sorted_words[:-1], axis=1)]))
        else:
            first = np.empty(0, dtype=np.int64)
        self.distinct = len(first)
        self.member_offsets = np.append(first, n).astype(index)
        self.counts = np.diff(self.member_offsets).astype(np.int32)
        self.member_ids = np.ascontiguousarray(ids[order], dtype=np.int64)
        self.member_of_position = np.empty(n, dtype=index)
        self.member_of_position[order] = np.arange(n, dtype=index)
        distinct_words = np.ascontiguousarray(sorted_words[first])
        self._single_word = distinct_words.shape[1] == 1
        self.words = distinct_words[:, 0].copy() if self._single_word else distinct_words
        distinct_bytes = codes[order[first]]
        del words, sorted_words, order

        if substring_bits is None:
            substring_bits = 16 if self.distinct >= SMALL_TABLE_BELOW and nbytes >= 2 else 8
        step = substring_bits // 8
        self.spans = [(start, min(start + step, nbytes)) for start in range(0, nbytes, step)]
        self.widths = [8 * (stop - start) for start, stop in self.spans]
        self.tables = len(self.spans)
        self._stride = (1 << max(self.widths)) + 1
        entries = _index_dtype(self.tables * self.distinct)  # offsets span every table
        offsets = np.zeros((self.tables, self._stride), dtype=entries)
        buckets = np.empty(self.tables * self.distinct, dtype=index)
        for table, keys in enumerate(self._substrings(distinct_bytes)):
            width = self.widths[table]
            counts = np.bincount(keys, minlength=1 << width)
            offsets[table, 1:(1 << width) + 1] = np.cumsum(counts)
            offsets[table, (1 << width) + 1:] = self.distinct  # unused keys of a narrow table
            offsets[table] += table * self.distinct
            buckets[table * self.distinct:(table + 1) * self.distinct] = np.argsort(
                keys, kind="stable")
        self.offsets = offsets.reshape(-1)
        self.buckets = buckets
        self._rounds = self._plan_rounds()
        self._table_starts = np.arange(self.tables, dtype=np.int64) * self._stride
        self._mean_own_buckets = sum(self.distinct / (1 << width) for width in self.widths)
        self._uniform_costs: dict[int, float] = {}  # by k, see _uniform_cost_ns
        if self._single_word:  # make the look-up masks now, not in the first queries
            for distance in range(self.bits + 1):
                if comb(self.bits, distance) > BALL_MAX_LOOKUPS:
                    break
                _ball_masks(self.bits, distance)

    # --- construction helpers ------------------------------------------------------------------

    def _substrings(self, codes: np.ndarray) -> list[np.ndarray]:
        """Each table's key of each row of ``codes``: its bytes, little-endian."""
        keys = []
        for start, stop in self.spans:
            key = codes[:, start].astype(np.int64)
            if stop - start == 2:
                key |= codes[:, start + 1].astype(np.int64) << 8
            keys.append(key)
        return keys

    def _plan_rounds(self) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, float]]:
        """Per round ρ: the XOR masks of its probes, each probe's table, that table's offset
        in :attr:`offsets`, and the estimated cost of the round (probes + expected candidates
        at mean bucket occupancy)."""
        rounds = []
        for flips in range(min(self.widths) + 1):
            masks = [_masks(width, flips) for width in self.widths]
            tables = np.repeat(np.arange(self.tables), [len(m) for m in masks])
            probes = len(tables)
            expected = sum(comb(width, flips) * self.distinct / (1 << width)
                           for width in self.widths)
            cost = MIH_NS_ROUND + MIH_NS_PROBE * probes + MIH_NS_VERIFY * expected
            base = (tables * self._stride).astype(np.int64)
            rounds.append((np.concatenate(masks).astype(np.int64), tables, base, cost))
        return rounds

    # --- generations -------------------------------------------------------------------------

    def liveness(self, hidden_positions: np.ndarray) -> Liveness:
        """The view of a generation that hides the codes at ``hidden_positions`` (unique)."""
        if not len(hidden_positions):
            return Liveness(self.size, None, np.empty(0, dtype=np.int64))
        members = np.sort(self.member_of_position[hidden_positions]).astype(np.int64)
        distinct = np.searchsorted(self.member_offsets, members, side="right") - 1
        live_counts = self.counts.copy()
        np.subtract.at(live_counts, distinct, 1)
        return Liveness(self.size - len(members), live_counts, members)

    def memory_bytes(self) -> int:
        """Bytes of every array this index holds (what it adds to the shards' own codes)."""
        arrays = (self.member_offsets, self.counts, self.member_ids, self.member_of_position,
                  self.words, self.offsets, self.buckets)
        return sum(array.nbytes for array in arrays)

    # --- search ------------------------------------------------------------------------------

    def search(self, query: np.ndarray, k: int, live: Liveness, budget_ns: float | None = None,
               stats: dict[str, int] | None = None) -> tuple[np.ndarray, np.ndarray] | None:
        """(distances, ids) of the exact top ``min(k, live.live)`` of one packed query, by
        ascending distance, ties by ascending id; None if finishing was estimated to cost
        more than ``budget_ns`` (None: no limit), in which case the caller scans instead.

        Two kinds of steps raise the radius G within which every code has been seen: an
        MIH round (G becomes ``tables * (ρ + 1) - 1``; its cost is known before it runs: the
        probed buckets' sizes) and, for codes of at most 64 bits, an exact look-up of every
        code at distance G + 1 in the sorted distinct codes (``comb(bits, G + 1)`` binary
        searches, no verification). The cheaper step per unit of G goes first: a query in a
        dense cluster, whose k-th neighbour is within a bit or two, costs a few look-ups
        instead of verifying the cluster. ``stats`` (optional) accumulates what was done.
        """
        k = min(int(k), live.live)
        if k <= 0:
            _count(stats, "queries", 1)
            return np.empty(0, dtype=np.int32), np.empty(0, dtype=np.int64)
        query_keys = self._query_keys(query)
        spent = MIH_NS_QUERY
        uniform = _uniform_kth_distance(self.bits, self.distinct, k)
        if budget_ns is not None and self._looks_uniform(query_keys, k, budget_ns - spent):
            _count(stats, "abandoned", 1)
            return None
        state = _Query(self, query, k, live)
        seen = -1  # every code within this distance of the query has been seen
        rounds = 0  # MIH rounds done
        pending: tuple[np.ndarray, np.ndarray, float] | None = None  # the next round, probed
        last_round = min(self.widths)
        while state.bound is None or state.bound > seen:
            if pending is None and rounds <= last_round:
                pending = self._probe(query_keys, rounds)
            ball_cost = self._ball_cost(seen + 1)
            mih_cost, mih_after = self._rounds_past(pending, rounds, seen)
            # cheaper per unit of radius first; the MIH side counts every round it needs to
            # get past ``seen`` (rounds whose guarantee a look-up already passed gain nothing)
            use_ball = pending is None or (
                ball_cost is not None and ball_cost * (mih_after - seen) < mih_cost)
            if use_ball:
                assert ball_cost is not None  # rounds ran out only if every code was seen
                cost, after = ball_cost, seen + 1
            else:
                assert pending is not None
                cost = pending[2]
                after = self.bits if rounds == last_round else max(
                    seen, self.tables * (rounds + 1) - 1)
            # the k-th distance seen so far only bounds the final one; expect no more than
            # uniform codes would need (a runaway is still caught: each step's own cost is
            # exact before it runs)
            expected = state.bound if state.bound is None else min(state.bound, uniform)
            if budget_ns is not None and (
                    spent + cost + self._rest_ns(after, rounds + (not use_ball), expected)
                    > budget_ns):
                if stats is not None:
                    stats["abandoned"] = stats.get("abandoned", 0) + 1
                return None
            spent += cost
            if use_ball:
                found = self._ball(state.query_word, seen + 1)
                state.absorb(found, np.full(len(found), seen + 1, dtype=np.int32))
                _count(stats, "lookups", comb(self.bits, seen + 1))
                _count(stats, "lookup_steps", 1)
            else:
                assert pending is not None
                found = self.buckets[_ranges(pending[0], pending[1])]
                state.absorb(found, self._distances(found, state.query_words))
                _count(stats, "probes", len(pending[0]))
                _count(stats, "candidates", len(found))
                _count(stats, "rounds", 1)
                rounds += 1
                pending = None
            seen = after
        _count(stats, "queries", 1)
        return self._members(state.kept, state.kept_distances, k, live, state.live_counts)

    def _looks_uniform(self, query_keys: np.ndarray, k: int, budget_ns: float) -> bool:
        """True if this query's neighbourhood is no denser than uniform random codes would
        make it (its own buckets hold at most twice the mean) while, for uniform codes, the
        radius the k-th neighbour is expected at costs more than ``budget_ns`` to reach: then
        the scan is the cheaper choice, decided before any probing (~10 µs instead of a
        round or two)."""
        if self._uniform_cost_ns(k) <= UNIFORM_MARGIN * budget_ns:
            return False
        own = query_keys + self._table_starts
        own_sizes = int((self.offsets[own + 1] - self.offsets[own]).sum())
        return own_sizes <= 2 * self._mean_own_buckets + self.tables

    def _uniform_cost_ns(self, k: int) -> float:
        """Estimated cost of reaching the radius uniform codes put the k-th neighbour at."""
        cost = self._uniform_costs.get(k)
        if cost is None:
            expected = _uniform_kth_distance(self.bits, self.distinct, k)
            cost = self._uniform_costs[k] = self._rest_ns(-1, 0, expected)
        return cost

    def _query_keys(self, query: np.ndarray) -> np.ndarray:
        """The query's key in each table, as :meth:`_substrings` makes them, in one or two
        NumPy calls (this runs for every query, also for those that are then scanned)."""
        if self.widths[0] == 8:
            return query.astype(np.int64)
        even = self.nbytes - self.nbytes % 2
        keys = np.ascontiguousarray(query[:even]).view("<u2").astype(np.int64)
        return np.append(keys, query[-1]) if self.nbytes % 2 else keys

    def _probe(self, query_keys: np.ndarray, flips: int) -> tuple[np.ndarray, np.ndarray, float]:
        """Bucket ranges of MIH round ``flips`` for a query, and what verifying them costs."""
        masks, tables, base, _ = self._rounds[flips]
        keys = (query_keys[tables] ^ masks) + base
        starts = self.offsets[keys]
        lengths = self.offsets[keys + 1] - starts
        cost = MIH_NS_ROUND + MIH_NS_PROBE * len(keys) + MIH_NS_VERIFY * int(lengths.sum())
        return starts, lengths, cost

    def _rounds_past(self, pending: tuple[np.ndarray, np.ndarray, float] | None, rounds: int,
                     seen: int) -> tuple[float, int]:
        """(cost, radius seen after): the MIH rounds from ``rounds`` on until their guarantee
        passes ``seen``; the next round's cost is exact (``pending``), later ones estimated."""
        if pending is None:
            return float("inf"), seen
        cost = pending[2]
        last_round = len(self._rounds) - 1
        while rounds < last_round and self.tables * (rounds + 1) - 1 <= seen:
            rounds += 1
            cost += self._rounds[rounds][3]
        after = self.bits if rounds == last_round else self.tables * (rounds + 1) - 1
        return cost, max(after, seen + 1)

    def _ball_cost(self, distance: int) -> float | None:
        """Cost of looking up every code at exactly ``distance``; None where not offered
        (codes wider than one word, or more look-ups than :data:`BALL_MAX_LOOKUPS`)."""
        if not self._single_word or distance > self.bits:
            return None
        lookups = comb(self.bits, distance)
        if lookups > BALL_MAX_LOOKUPS:
            return None
        return BALL_NS_STEP + BALL_NS_LOOKUP * lookups

    def _ball(self, query_word: np.uint64, distance: int) -> np.ndarray:
        """Distinct codes at exactly ``distance`` from the query: binary searches of every
        such code in the sorted distinct codes."""
        wanted = query_word ^ _ball_masks(self.bits, distance)
        slots = np.minimum(np.searchsorted(self.words, wanted), self.distinct - 1)
        return slots[self.words[slots] == wanted]

    def _rest_ns(self, seen: int, rounds: int, bound: int | None) -> float:
        """Estimated cost of raising the seen radius from ``seen`` to the k-th distance
        ``bound`` (0 while fewer than k codes have been seen: nothing to go on), by MIH
        rounds at mean bucket occupancy or by look-ups, whichever is cheaper."""
        if bound is None or bound <= seen:
            return 0.0
        last = min(-(-(bound + 1) // self.tables) - 1, len(self._rounds) - 1)
        by_rounds = sum(self._rounds[r][3] for r in range(rounds, last + 1))
        by_lookups = 0.0
        for distance in range(seen + 1, bound + 1):
            cost = self._ball_cost(distance)
            if cost is None:
                return by_rounds
            by_lookups += cost
        return min(by_rounds, by_lookups)

    def _distances(self, distinct: np.ndarray, query_words: np.ndarray) -> np.ndarray:
        if self._single_word:
            return np.bitwise_count(self.words[distinct] ^ query_words[0, 0]).astype(np.int32)
        return np.bitwise_count(self.words[distinct] ^ query_words[0]).sum(axis=1,
                                                                            dtype=np.int32)

    def _members(self, kept: np.ndarray, distances: np.ndarray, k: int, live: Liveness,
                 live_counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The k smallest (distance, id) among the live members of the kept distinct codes.

        Members are stored by ascending id, so the first k live members of each code are
        enough; a code with h hidden members has them among its first k + h.
        """
        take = np.minimum(self.counts[kept], k + self.counts[kept] - live_counts[kept])
        members = _ranges(self.member_offsets[kept].astype(np.int64), take)
        member_distances = np.repeat(distances, take)
        if live.dead_members.size:
            alive = ~_in_sorted(members, live.dead_members)
            members, member_distances = members[alive], member_distances[alive]
        ids = self.member_ids[members]
        best = np.lexsort((ids, member_distances))[:k]
        return member_distances[best], ids[best]


class _Query:
    """One query's running state: the distinct codes that can still be in its top k, as
    sorted int64 keys ``distance << 32 | distinct index`` (one np.sort orders them by
    distance and brings repeats together; np.unique and stable argsorts cost ~10x more)."""

    def __init__(self, index: MultiIndexHash, query: np.ndarray, k: int, live: Liveness) -> None:
        self.k = k
        self.query_words = _words(query[None, :])
        self.query_word = self.query_words[0, 0]
        self.live_counts = index.counts if live.live_counts is None else live.live_counts
        self.keys = np.empty(0, dtype=np.int64)
        self.bound: int | None = None  # the k-th distance among the live codes seen so far

    @property
    def kept(self) -> np.ndarray:
        return self.keys & _LOW32

    @property
    def kept_distances(self) -> np.ndarray:
        return (self.keys >> 32).astype(np.int32)

    def absorb(self, found: np.ndarray, distances: np.ndarray) -> None:
        """Add verified distinct codes (repeats allowed); keep those within the k-th distance.

        The k-th distance only shrinks as codes are added, so a code dropped once can never
        return to the top k.
        """
        if not found.size:
            return
        keep = self.live_counts[found] > 0
        if self.bound is not None:
            keep &= distances <= self.bound
        fresh = (distances[keep].astype(np.int64) << 32) | found[keep]
        keys = np.sort(np.concatenate([self.keys, fresh]))
        if len(keys) > 1:
            keys = keys[np.concatenate([[True], keys[1:] != keys[:-1]])]
        reached = np.cumsum(self.live_counts[keys & _LOW32])
        if reached.size and reached[-1] >= self.k:
            self.bound = int(keys[np.searchsorted(reached, self.k)] >> 32)
            keys = keys[:np.searchsorted(keys, (self.bound + 1) << 32)]
        self.keys = keys
