"""Bounded spatial point buffer: one coloured point per voxel, incremental, numpy only.

Shared by the service, the CLI and the web app to accumulate a growing world-frame reconstruction.

Design
------
* Points live in flat arrays in *slot* order (the order their voxels were first seen): ``xyz (N, 3) float32``,
  ``rgb (N, 3) uint8``, ``conf (N,) float32``. Arrays grow by doubling; no Python lists of points.
* A voxel is ``floor(xyz / voxel_size)`` computed in float32. Its three integer coordinates are packed into one
  int64 key and looked up in an open-addressing hash table (linear probing, load <= 1/2) that is probed for a whole
  batch at once with vectorised rounds. Only the new points are hashed; the cost of an insert does not depend on how
  many points the buffer already holds.
* Merge rule: **one point per voxel, the one with the highest confidence** (position, colour and confidence all
  come from that single observation; a later point replaces it only if its confidence is strictly higher). This
  keeps real observed points (no smearing across the voxel) and favours the best-registered views.
* Cap policy: after every insert ``len(buffer) <= max_points``. When an insert overflows the cap, the voxel size is
  multiplied by ``coarsen_factor`` and every stored point is re-binned with the same merge rule, repeatedly until the
  cap holds. Coverage is kept at a coarser resolution rather than evicting areas. Re-binning starts a new *epoch*.
* Incremental updates: every insert gets a tick; :meth:`PointBuffer.changes_since` returns the points whose voxel
  was created or replaced after a :class:`Marker`, with their slot index so a viewer can overwrite in place; after a
  :meth:`~PointBuffer.clear` or a re-bin the delta is flagged ``reset`` and holds everything.
* Tags: every point keeps the integer tag of its insert (the service tags a frame's points with its frame id), so
  :meth:`PointBuffer.transform_tags` can move what one frame contributed, e.g. by a loop-closure correction, and
  re-bin the moved map.
* Coordinates are limited to ``|floor(xyz / voxel_size)| < 2**20`` per axis (about +-10,000 scene units at 1 cm);
  points outside, and points with non-finite coordinates or confidence, are ignored.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_BITS = 21
_OFFSET = 1 << (_BITS - 1)           # voxel coordinates are stored as q + _OFFSET in [0, 2**21)
_LIMIT = float(_OFFSET)              # |q| must be < _LIMIT
_PACK = np.array([1 << (2 * _BITS), 1 << _BITS, 1], np.int64)   # key = qx' * 2**42 + qy' * 2**21 + qz'
_EMPTY = np.int64(-1)                # keys are non-negative
_MIX1 = np.uint64(0x9E3779B97F4A7C15)
_MIX2 = np.uint64(0xBF58476D1CE4E5B9)
_CHUNK = 1 << 18                     # large inserts are merged in chunks (bounded table headroom, cache-friendly)
_SCALAR_TAIL = 64                    # probe chains still unresolved for this many keys finish in a scalar loop


def _rows(a: np.ndarray) -> np.ndarray:
    """``(N, C)`` C-contiguous array -> ``(N,)`` view of opaque row items (fast fancy indexing of whole rows)."""
    return a.view(np.dtype((np.void, a.shape[1] * a.itemsize))).reshape(-1)


@dataclass(frozen=True)
class Marker:
    """A point in the buffer's history: ``epoch`` changes on clear / re-bin, ``tick`` counts inserts."""

    epoch: int
    tick: int


@dataclass
class PointDelta:
    """Points created or replaced since a marker.

    Attributes:
        xyz: ``(K, 3)`` float32 world coordinates.
        rgb: ``(K, 3)`` uint8 colours.
        conf: ``(K,)`` float32 confidences.
        index: ``(K,)`` int64 slot of each point; a slot keeps its voxel until the next reset.
        reset: the receiver must drop everything it holds first (buffer cleared or re-binned).
        marker: pass this to the next :meth:`PointBuffer.changes_since` call.
    """

    xyz: np.ndarray
    rgb: np.ndarray
    conf: np.ndarray
    index: np.ndarray
    reset: bool
    marker: Marker


class PointBuffer:
    """Voxel-hashed coloured point set with a hard size cap (see module docstring for the policies).

    Args:
        voxel_size: initial voxel edge in scene units (> 0).
        max_points: hard cap on the number of stored points (>= 1); default 2,000,000.
        coarsen_factor: voxel size multiplier applied when the cap overflows (> 1).
    """

    def __init__(self, voxel_size: float = 0.01, max_points: int = 2_000_000, coarsen_factor: float = 1.5) -> None:
        if not voxel_size > 0:
            raise ValueError(f"voxel_size must be > 0, got {voxel_size}")
        if max_points < 1:
            raise ValueError(f"max_points must be >= 1, got {max_points}")
        if not coarsen_factor > 1:
            raise ValueError(f"coarsen_factor must be > 1, got {coarsen_factor}")
        self.initial_voxel_size = float(voxel_size)
        self.max_points = int(max_points)
        self.coarsen_factor = float(coarsen_factor)
        self._epoch = 0
        self._reset_storage()

    # ------------------------------------------------------------------ public API

    @property
    def voxel_size(self) -> float:
        """Current voxel edge (grows when the cap forces a re-bin)."""
        return self._voxel

    def __len__(self) -> int:
        return self._n

    def clear(self) -> None:
        """Drop every point and restore the initial voxel size."""
        self._reset_storage()
        self._epoch += 1

    def marker(self) -> Marker:
        """The current position in the buffer history (for :meth:`changes_since`)."""
        return Marker(self._epoch, self._tick)

    def insert(self, xyz: np.ndarray, rgb: np.ndarray, conf: np.ndarray, tag: int = -1) -> int:
        """Merge points into the buffer.

        Args:
            xyz: ``(M, 3)`` float32 world coordinates (other float dtypes are converted).
            rgb: ``(M, 3)`` uint8 colours.
            conf: ``(M,)`` confidences (higher is better).
            tag: integer kept with each point that wins a voxel (:meth:`transform_tags`); -1 = untagged.

        Returns:
            The number of voxels created by this insert (before any cap-induced re-bin).
        """
        xyz = np.ascontiguousarray(xyz, dtype=np.float32).reshape(-1, 3)
        rgb = np.ascontiguousarray(rgb, dtype=np.uint8).reshape(-1, 3)
        conf = np.ascontiguousarray(conf, dtype=np.float32).reshape(-1)
        if not (len(xyz) == len(rgb) == len(conf)):
            raise ValueError(f"length mismatch: xyz {len(xyz)}, rgb {len(rgb)}, conf {len(conf)}")
        tags = np.full(len(xyz), tag, np.int64)
        self._tick += 1
        created = 0
        for i in range(0, len(xyz), _CHUNK):
            created += self._merge(xyz[i:i + _CHUNK], rgb[i:i + _CHUNK], conf[i:i + _CHUNK], tags[i:i + _CHUNK])
        while self._n > self.max_points:
            self._rebin(self._voxel * self.coarsen_factor)
        return created

    def transform_tags(self, transforms: dict[int, np.ndarray]) -> int:
        """Move the stored points of each tag by its ``(4, 4)`` matrix (a similarity: ``x -> A x + b``; tags not
        given stay) and re-bin everything at the current voxel size (new epoch: the next :meth:`changes_since`
        is a ``reset``). Returns how many points moved."""
        if not transforms:
            return 0
        keys = np.array(sorted(transforms), np.int64)
        mats = np.stack([np.asarray(transforms[k], np.float64) for k in keys.tolist()])
        moved = 0
        for i in range(0, self._n, _CHUNK):  # (K, 4, 4) per chunk: bounded memory
            tags = self._tag[i:min(self._n, i + _CHUNK)]
            pos = np.minimum(np.searchsorted(keys, tags), len(keys) - 1)
            idx = np.flatnonzero(keys[pos] == tags)
            if idx.size:
                M = mats[pos[idx]]
                xyz = self._xyz[i + idx].astype(np.float64)
                self._xyz[i + idx] = (np.einsum("kij,kj->ki", M[:, :3, :3], xyz) + M[:, :3, 3]).astype(np.float32)
                moved += idx.size
        if moved:
            self._rebin(self._voxel)
        return moved

    def points(self, copy: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """All stored points: xyz ``(N, 3)`` float32, rgb ``(N, 3)`` uint8, conf ``(N,)`` float32.

        With ``copy=False`` the arrays are read-only views that the next insert may overwrite.
        """
        n = self._n
        out = (self._xyz[:n], self._rgb[:n], self._conf[:n])
        if copy:
            return tuple(a.copy() for a in out)  # type: ignore[return-value]
        views = tuple(a.view() for a in out)
        for v in views:
            v.flags.writeable = False
        return views  # type: ignore[return-value]

    def changes_since(self, marker: Marker | None) -> PointDelta:
        """Points created or replaced after ``marker`` (everything, flagged ``reset``, if ``marker`` is None or
        belongs to an earlier epoch)."""
        n = self._n
        if marker is None or marker.epoch != self._epoch:
            idx = np.arange(n, dtype=np.int64)
            reset = True
        else:
            idx = np.flatnonzero(self._stamp[:n] > marker.tick).astype(np.int64)
            reset = False
        return PointDelta(self._xyz[idx], self._rgb[idx], self._conf[idx], idx, reset, self.marker())

    # ------------------------------------------------------------------ internals

    def _reset_storage(self) -> None:
        self._voxel = self.initial_voxel_size
        self._n = 0
        self._tick = 0
        self._alloc_storage(1 << 16)
        self._alloc_table(1 << 20)

    def _alloc_storage(self, cap: int) -> None:
        self._xyz = np.empty((cap, 3), np.float32)
        self._rgb = np.empty((cap, 3), np.uint8)
        self._conf = np.empty(cap, np.float32)
        self._stamp = np.zeros(cap, np.uint32)
        self._tag = np.full(cap, -1, np.int64)
        self._keys = np.empty(cap, np.int64)
        self._scratch = np.empty(cap, np.int64)

    def _grow_storage(self, need: int) -> None:
        cap = len(self._conf)
        if need <= cap:
            return
        while cap < need:
            cap *= 2
        n = self._n
        old = (self._xyz, self._rgb, self._conf, self._stamp, self._keys, self._tag)
        self._alloc_storage(cap)
        for dst, src in zip((self._xyz, self._rgb, self._conf, self._stamp, self._keys, self._tag), old):
            dst[:n] = src[:n]

    def _alloc_table(self, size: int) -> None:
        self._table = np.full((size, 2), _EMPTY, np.int64)   # rows (key, slot); one cache line per probe
        self._shift = np.uint64(64 - (size.bit_length() - 1))
        self._tmask = size - 1

    def _ensure_table(self, extra: int) -> None:
        """Keep the load factor <= 1/2 for up to ``extra`` new keys (rehashing the stored ones if needed)."""
        need = 2 * (self._n + extra)
        size = len(self._table)
        if need <= size:
            return
        while size < need:
            size *= 2
        self._alloc_table(size)
        n = self._n
        if n:
            pos, _ = self._locate(self._keys[:n])
            self._table[pos, 1] = np.arange(n)

    def _keys_of(self, xyz: np.ndarray, conf: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Voxel key of each point, and the mask of points that have one (finite, in range), or None if all do."""
        q = np.floor(xyz / np.float32(self._voxel))
        valid = None
        if not (np.abs(q).max(initial=0.0) < _LIMIT and np.isfinite(conf).all()):   # rare: check row by row
            valid = (np.abs(q) < _LIMIT).all(axis=1) & np.isfinite(conf)
            q[~valid] = 0
        q += np.float32(_OFFSET)                     # exact: |q| < 2**20 fits float32's 24-bit mantissa
        return q.astype(np.int64) @ _PACK, valid

    def _hash(self, keys: np.ndarray) -> np.ndarray:
        """Home position of each key: multiply / xor-shift / multiply mixing (a bare multiplicative hash clusters
        the lattice keys of a surface), top bits."""
        x = keys.view(np.uint64) * _MIX1
        x ^= x >> np.uint64(29)
        x *= _MIX2
        return (x >> self._shift).view(np.intp)

    def _locate(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Table position and storage slot of each key (duplicates allowed); absent keys claim an empty position
        and get slot -1."""
        mask = self._tmask
        flat = self._table.reshape(-1)           # key of position p at 2p, its slot at 2p + 1
        pos = self._hash(keys)
        home = _rows(self._table).take(pos).view(np.int64).reshape(-1, 2)
        slot = np.ascontiguousarray(home[:, 1])
        moved = np.flatnonzero(home[:, 0] != keys)   # most keys of a revisited area are found at home
        todo = moved
        while todo.size > _SCALAR_TAIL:
            p2, k = 2 * pos[todo], keys.take(todo)
            cur = flat.take(p2)
            empty = np.flatnonzero(cur == _EMPTY)
            if empty.size:
                pe = p2[empty]
                flat[pe] = k[empty]              # racing keys: the last write wins the position ...
                cur[empty] = flat.take(pe)
            todo = todo[cur != k]                # ... the losers, and keys meeting another key, probe on
            pos[todo] = (pos[todo] + 1) & mask
        for i in todo.tolist():                  # the few keys in long probe chains: cheaper one by one
            k, p = int(keys[i]), int(pos[i])
            while True:
                cur = int(flat[2 * p])
                if cur == k or cur == _EMPTY:
                    flat[2 * p] = k
                    break
                p = (p + 1) & mask
            pos[i] = p
        if moved.size:
            slot[moved] = flat.take(2 * pos[moved] + 1)
        return pos, slot

    def _merge(self, xyz: np.ndarray, rgb: np.ndarray, conf: np.ndarray, tags: np.ndarray) -> int:
        keys, valid = self._keys_of(xyz, conf)
        if valid is not None:
            keys, xyz, rgb, conf, tags = keys[valid], xyz[valid], rgb[valid], conf[valid], tags[valid]
        m = len(keys)
        if m == 0:
            return 0
        self._ensure_table(m)
        pos, slot = self._locate(keys)
        fresh = np.flatnonzero(slot < 0)
        created = 0
        if fresh.size:
            flat = self._table.reshape(-1)
            ps = 2 * pos[fresh] + 1                       # slot entries of the claimed positions
            flat[ps] = -2 - fresh                         # tentative owner per new voxel; the last write wins
            owners = fresh[-2 - flat.take(ps) == fresh]
            created = len(owners)
            n0 = self._n
            self._grow_storage(n0 + created)
            flat[2 * pos[owners] + 1] = np.arange(n0, n0 + created)
            self._keys[n0:n0 + created] = keys[owners]
            self._conf[n0:n0 + created] = -np.inf
            self._n = n0 + created
            slot[fresh] = flat.take(ps)
        # Highest confidence per voxel, against the stored point and the other points of this batch.
        before = self._conf.take(slot)
        np.maximum.at(self._conf, slot, conf)
        win = np.flatnonzero((conf > before) & (conf == self._conf.take(slot)))
        if win.size:
            ws = slot.take(win)
            self._scratch[ws] = win                      # one winner per voxel when confidences tie
            win = win[self._scratch.take(ws) == win]
            ws = slot.take(win)
            _rows(self._xyz)[ws] = _rows(xyz).take(win)  # whole rows as opaque 12 / 3 byte items
            _rows(self._rgb)[ws] = _rows(rgb).take(win)
            self._tag[ws] = tags.take(win)
            self._stamp[ws] = self._tick
        return created

    def _rebin(self, voxel: float) -> None:
        """Re-bin every stored point at voxel size ``voxel`` (new epoch)."""
        xyz, rgb, conf = self.points(copy=True)
        tags = self._tag[:self._n].copy()
        tick = self._tick
        self._reset_storage()
        self._voxel = float(voxel)
        self._tick = tick
        self._epoch += 1
        self._merge(xyz, rgb, conf, tags)
