"""Where the engine's time goes, op by op.

    with gnr.profile() as prof:
        editor.edit(image, "a photo of a cat", "a photo of a tiger", config="nonstyle")
    print(prof)          # a table: each op and device, its calls, seconds and share, slowest first
    prof.rows            # [OpTime(op, device, calls, seconds), ...], slowest first
    prof.wall            # seconds spent inside the `with` block

Every op the engine dispatches (csrc/ops.def: products, convolutions, norms,
attention, energies, copies) is counted while the block runs, on every
model and thread of the process. Time outside the ops (Python, the
scheduler's arithmetic, host-side work) is `wall - ops_seconds`.

On a CUDA model each op is followed by a synchronisation while profiling,
so that its time is its own: a profiled edit runs slower than a plain one,
and the op times, not the wall time, are what a profile is for. Profiles do
not nest.
"""
from __future__ import annotations

import time
from typing import NamedTuple

from . import _C


class OpTime(NamedTuple):
    """One op on one device: its calls and the seconds they took in all."""
    op: str        # the op's name (csrc/ops.def)
    device: str    # "cpu" or "cuda"
    calls: int
    seconds: float


__all__ = ["profile", "Profile", "OpTime"]


class Profile:
    """Per-op call counts and times of the engine while a `with` block runs
    (made by `gnr.profile()`). Filled when the block ends:

    rows: [OpTime(op, device, calls, seconds)], slowest first.
    wall: seconds the block took.
    """

    def __init__(self):
        self.rows: list[OpTime] = []
        self.wall = 0.0
        self._t0 = None

    def __enter__(self) -> "Profile":
        try:
            _C._op_profile_start()
        except ValueError as e:  # the engine's word for "already running"
            raise RuntimeError(str(e)) from None
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.wall = time.perf_counter() - self._t0
        self.rows = sorted((OpTime(*r) for r in _C._op_profile_stop()), key=lambda r: -r.seconds)

    @property
    def ops_seconds(self) -> float:
        """Seconds spent inside ops, all of them."""
        return sum(r.seconds for r in self.rows)

    def as_dicts(self) -> list[dict]:
        """The rows as plain dicts (for JSON)."""
        return [r._asdict() for r in self.rows]

    def table(self, top: int | None = None) -> str:
        """The rows as a text table, slowest first (`top`: only that many)."""
        wall = self.wall or 1.0
        lines = [f"{'op':<28} {'device':<6} {'calls':>7} {'seconds':>10} {'ms/call':>9} {'share':>6}"]
        for r in self.rows[:top]:
            lines.append(f"{r.op:<28} {r.device:<6} {r.calls:>7} {r.seconds:>10.4f} "
                         f"{1e3 * r.seconds / r.calls:>9.3f} {100 * r.seconds / wall:>5.1f}%")
        outside = self.wall - self.ops_seconds
        lines.append(f"{'(outside ops)':<28} {'':<6} {'':>7} {outside:>10.4f} {'':>9} {100 * outside / wall:>5.1f}%")
        lines.append(f"{'(wall)':<28} {'':<6} {'':>7} {self.wall:>10.4f}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()

    def __repr__(self) -> str:
        return f"<gnr.Profile: {len(self.rows)} ops, {self.ops_seconds:.3f} s in ops of {self.wall:.3f} s>"


def profile() -> Profile:
    """A context manager that counts the engine's ops while its block runs:
    `with gnr.profile() as prof: ...`, then `print(prof)`."""
    return Profile()
