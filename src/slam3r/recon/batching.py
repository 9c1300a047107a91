"""Network calls as requests, so that the calls of several engines (several streams) run as one batched forward.

An engine step that needs a network yields a :class:`NetCall` (which network method, on which inputs) and receives
its output: the engine's state stays its own, only the arithmetic is shared. :func:`drive` runs one such generator
with every call executed at once (what a single engine does); :func:`drive_many` runs several generators in
lockstep, and each round executes the pending calls that have the same method, constants and input shapes (bar
the batch dimension) as one call on their inputs concatenated along the batch dimension, then hands each
generator its slice of the output. The networks treat batch elements independently, so the results equal the
unbatched ones up to float rounding (``tests/test_recon_batching.py``).

Inputs and outputs are trees of tensors: tensors, ``None``, tuples / lists and dataclasses of them
(:class:`~slam3r.models.base.ViewFeatures`, :class:`~slam3r.models.base.Pointmaps`), every tensor batched along
the call's ``dim`` (views first everywhere, so ``dim=1``; the encoder's images and tokens ``dim=0``).
"""

from __future__ import annotations

import dataclasses
import time
from collections import defaultdict
from collections.abc import Callable, Generator, Sequence
from typing import Any

import torch
from torch import Tensor

from slam3r.models.precision import autocast

Steps = Generator["NetCall", Any, Any]
"""An engine step: yields network calls, receives their outputs, returns its result."""


@dataclasses.dataclass(eq=False)
class NetCall:
    """One network call: ``fn(*args, **kwargs)`` under no_grad and ``precision`` autocast on ``device``.

    ``args`` are tensor trees batched along ``dim``; ``kwargs`` are constants (they, ``fn`` and the shapes form
    the grouping key). ``timings[timing]`` (an engine's timing table) receives the call's seconds, a batched
    call's split by batch share."""

    fn: Callable[..., Any]
    args: tuple
    kwargs: dict
    device: torch.device
    precision: str
    dim: int = 1
    timings: dict | None = None
    timing: str | None = None

    def batch_size(self) -> int:
        return next(t.shape[self.dim] for t in _leaves(self.args) if t is not None)

    def key(self) -> tuple:
        """Calls with equal keys can run as one call on concatenated inputs."""
        shapes = tuple(None if t is None else (t.dtype, t.shape[:self.dim] + t.shape[self.dim + 1:])
                       for t in _leaves(self.args))
        return (self.fn, _freeze(self.kwargs), self.dim, str(self.device), self.precision, _structure(self.args),
                shapes)


def _freeze(x: Any) -> Any:
    if isinstance(x, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in x.items()))
    if isinstance(x, (list, tuple)):
        return tuple(_freeze(v) for v in x)
    return x


def _children(x: Any) -> list | None:
    """The sub-trees of a node (``None`` for a leaf: a tensor or ``None``)."""
    if isinstance(x, (tuple, list)):
        return list(x)
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return [getattr(x, f.name) for f in dataclasses.fields(x)]
    return None


def _rebuild(x: Any, children: list) -> Any:
    if isinstance(x, (tuple, list)):
        return type(x)(children)
    return type(x)(*children)


def _leaves(x: Any) -> list[Tensor | None]:
    kids = _children(x)
    return [x] if kids is None else [leaf for k in kids for leaf in _leaves(k)]


def _structure(x: Any) -> Any:
    kids = _children(x)
    return None if kids is None else (type(x), tuple(_structure(k) for k in kids))


def _cat(trees: Sequence[Any], dim: int) -> Any:
    """Concatenate equal-structure trees leaf by leaf along ``dim``."""
    kids = _children(trees[0])
    if kids is None:
        return None if trees[0] is None else torch.cat(list(trees), dim)
    return _rebuild(trees[0], [_cat([_children(t)[i] for t in trees], dim) for i in range(len(kids))])


def _split(tree: Any, sizes: Sequence[int], dim: int) -> list[Any]:
    """Inverse of :func:`_cat`: ``len(sizes)`` trees, the leaves sliced along ``dim``."""
    kids = _children(tree)
    if kids is None:
        return [None] * len(sizes) if tree is None else list(tree.split(list(sizes), dim))
    parts = [_split(k, sizes, dim) for k in kids]
    return [_rebuild(tree, [p[j] for p in parts]) for j in range(len(sizes))]


def execute(calls: Sequence[NetCall]) -> list[Any]:
    """Run calls of equal :meth:`NetCall.key` as one call; returns each call's output."""
    first = calls[0]
    sizes = [c.batch_size() for c in calls]
    t0 = time.perf_counter()
    with torch.no_grad(), autocast(first.device, first.precision):
        if len(calls) == 1:
            outs = [first.fn(*first.args, **first.kwargs)]
        else:
            outs = _split(first.fn(*_cat([c.args for c in calls], first.dim), **first.kwargs), sizes, first.dim)
    seconds = time.perf_counter() - t0
    for c, size in zip(calls, sizes):
        if c.timings is not None and c.timing:
            c.timings[c.timing] += seconds * size / sum(sizes)
    return outs


def drive(steps: Steps) -> Any:
    """Run one engine step with each network call executed at once; returns the step's result."""
    try:
        call = next(steps)
        while True:
            call = steps.send(execute([call])[0])
    except StopIteration as stop:
        return stop.value


def drive_many(steps: Sequence[Steps]) -> list[tuple[Any, Exception | None]]:
    """Run several engine steps in lockstep, batching their compatible network calls (see module docstring).

    Returns ``(result, None)`` or ``(None, exception)`` per step: a step that fails does not stop the others (a
    batched call that fails is retried call by call, so the error reaches only the step whose input caused it)."""
    outcomes: list[tuple[Any, Exception | None]] = [(None, None)] * len(steps)
    pending: dict[int, NetCall] = {}

    def resume(i: int, value: Any = None, error: Exception | None = None) -> None:
        try:
            pending[i] = steps[i].throw(error) if error is not None else steps[i].send(value)
        except StopIteration as stop:
            outcomes[i] = (stop.value, None)
        except Exception as exc:  # noqa: BLE001 - reported per step, as a lone engine would raise it
            outcomes[i] = (None, exc)

    for i in range(len(steps)):
        resume(i)
    while pending:
        current, groups = dict(pending), defaultdict(list)
        pending.clear()
        for i, call in current.items():
            groups[call.key()].append(i)
        for ids in groups.values():
            try:
                outs = execute([current[i] for i in ids])
            except Exception:  # noqa: BLE001 - find whose call fails: each alone
                outs = None
            for j, i in enumerate(ids):
                if outs is not None:
                    resume(i, outs[j])
                    continue
                try:
                    out = execute([current[i]])
                except Exception as exc:  # noqa: BLE001
                    resume(i, error=exc)
                    continue
                resume(i, out[0])
    return outcomes
