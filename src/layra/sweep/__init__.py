"""Sweeps: grids over λ, over (k, m) and over embedding treatments, all in one results store.

    layra sweep --config configs/sweeps/gemma3-270m-embeddings.yaml
    run_sweep(load_sweep("my-sweep.yaml", ["eval.max_bytes=4000"]))

A sweep config (docs/sweep.md) names the base model θ0, the held-out texts and which
of them are new languages, and a list of grids:

* ``kind: train`` — a run config (``config`` file, relative to the sweep file, and/or
  inline ``run`` settings over it) and ``axes``: dotted run-config keys, each with a
  list of values. The points are their product, in the order written (the last axis
  varies fastest). Each trains with :func:`layra.train.train` into
  ``OUT/runs/GRID/POINT`` — resumed if unfinished, skipped if finished — and is
  evaluated as that run.
* ``kind: lambda`` — a model, language vectors (vector directories, or finished runs
  whose vector is extracted once into ``OUT/vectors``) and ``lambdas``. A λ is one
  number for every vector or a list with one per vector. ``mode`` says which of the
  paper's equations the points are: single (Eq. 1) and series (Eq. 2, the model is
  θ′) take one vector, merge (Eq. 3) two or more, instruct (Eq. 4) one vector on the
  instruct sibling. The model is loaded once per grid; each point's vectors are added
  in memory, the texts scored, and the vectors removed (exact restore) — nothing is
  reloaded from disk between points.

Every point is recorded in ``OUT/results`` exactly as ``layra eval bpb`` would record
it (``MODEL+VEC:λ`` or the run directory), under the display name ``GRID:POINT``;
the base model is a point too (``eval.base_name``). ``OUT/points/`` marks evaluated
points with a hash of their definition and the evaluation settings, so a rerun skips
them without loading anything. ``OUT/report/`` gets the table, a CSV, the trade-off
plot across the grid and a curve per λ grid; ``OUT/sweep.json`` lists every point with
its learning and retention.
"""

from layra.sweep.grid import (
    EvalConfig,
    GridConfig,
    Point,
    SweepConfig,
    check_plans,
    expand,
    load_sweep,
    validate_sweep,
)
from layra.sweep.run import run_sweep

__all__ = [
    "EvalConfig",
    "GridConfig",
    "Point",
    "SweepConfig",
    "check_plans",
    "expand",
    "load_sweep",
    "run_sweep",
    "validate_sweep",
]
