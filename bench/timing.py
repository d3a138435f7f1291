"""Timing shared by the benchmarks that measure rescore against a peer in the same run."""

from __future__ import annotations

import time


def interleaved(ours, theirs, n_items: int, slices: int, reps: int):
    """Time ``ours(a, b)`` and ``theirs(a, b)`` on the same slices of the work, alternating slice by slice, so
    that load from other processes on a shared machine hits both alike. Returns (results of the last rep,
    wall totals per rep, CPU totals per rep, per-slice wall ratios theirs/ours)."""
    bounds = [(n_items * i // slices, n_items * (i + 1) // slices) for i in range(slices)]
    wall = {"ours": [], "theirs": []}
    cpu = {"ours": [], "theirs": []}
    ratios = []
    for _ in range(reps):
        out = {"ours": [], "theirs": []}
        w = {"ours": 0.0, "theirs": 0.0}
        c = {"ours": 0.0, "theirs": 0.0}
        for a, b in bounds:
            pair = {}
            for name, fn in (("ours", ours), ("theirs", theirs)):
                t0, c0 = time.perf_counter(), time.process_time()
                out[name].append(fn(a, b))
                pair[name] = time.perf_counter() - t0
                w[name] += pair[name]
                c[name] += time.process_time() - c0
            ratios.append(pair["theirs"] / pair["ours"])
        for name in w:
            wall[name].append(w[name])
            cpu[name].append(c[name])
    return out, wall, cpu, ratios
