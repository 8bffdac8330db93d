"""Crystal-structure-prediction (CSP) metrics with the CDVAE / DiffCSP / PXRDGen protocol.

* :func:`structure_valid` — CDVAE structural validity: finite cell, volume > 0.1 Å³ and every
  interatomic distance (periodic images and a site's own image included) > 0.5 Å.
* :func:`composition_valid` — CDVAE's SMACT charge-neutrality + Pauling-electronegativity test
  (``smact_validity``); ``None`` when ``smact`` is not installed.
* :func:`match_metrics` — match rate / RMSE at k samples per target with pymatgen's
  ``StructureMatcher(stol=0.5, angle_tol=10, ltol=0.3)``; every target counts in the
  match-rate denominator, the RMSE (normalised by (V/N)^(1/3), as pymatgen returns it) is the
  mean over matched targets of the smallest RMS among the matching samples.
* :func:`write_report` — atomic JSON write.

This module deliberately imports no JAX (only numpy, pymatgen, the standard library and,
optionally, smact): ``match_metrics(workers>1)`` runs it in *spawned* worker processes.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import multiprocessing
import os
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np
from pymatgen.core.structure import IStructure, Structure

__all__ = ["GATES", "composition_valid", "match_metrics", "structure_valid", "write_report"]

GATES = ("structure", "cdvae", "none")
_CHUNK = 64  # targets per worker task


# ----------------------------------------------------------------------------- validity

def _check_structure_arg(structure, name: str = "structure") -> None:
    if structure is not None and not isinstance(structure, IStructure):
        raise ValueError(f"{name} must be a pymatgen Structure or None, got {type(structure).__name__}")


def _shortest_lattice_vector(matrix: np.ndarray) -> float:
    """Length of the shortest non-zero lattice vector (search over {-1,0,1}³ of the LLL basis)."""
    from pymatgen.core import Lattice

    lll = np.asarray(Lattice(matrix).lll_matrix, np.float64)
    n = np.array([v for v in itertools.product((-1, 0, 1), repeat=3) if any(v)], np.float64)
    return float(np.sqrt(((n @ lll) ** 2).sum(axis=1).min()))


def structure_valid(structure: Structure | None, min_dist: float = 0.5, min_volume: float = 0.1) -> bool:
    """CDVAE structural validity.

    True when the lattice and fractional coordinates are finite, the cell volume exceeds
    ``min_volume`` Å³ and the shortest interatomic distance, periodic images included, exceeds
    ``min_dist`` Å. The distance to a site's own periodic image (the shortest lattice vector) is
    included too, so a one-atom cell is judged by that alone. A degenerate or empty structure
    and ``None`` give False; only a bad argument raises ``ValueError``.
    """
    if not (math.isfinite(min_dist) and min_dist >= 0):
        raise ValueError(f"min_dist must be a finite number >= 0, got {min_dist}")
    if not (math.isfinite(min_volume) and min_volume >= 0):
        raise ValueError(f"min_volume must be a finite number >= 0, got {min_volume}")
    _check_structure_arg(structure)
    if structure is None or len(structure) == 0:
        return False
    try:
        m = np.asarray(structure.lattice.matrix, np.float64)
        f = np.asarray(structure.frac_coords, np.float64)
        if m.shape != (3, 3) or not np.isfinite(m).all() or not np.isfinite(f).all():
            return False
        if not abs(np.linalg.det(m)) > min_volume:
            return False
        if not _shortest_lattice_vector(m) > min_dist:
            return False
        if len(structure) > 1:
            d = np.array(structure.distance_matrix, np.float64)
            np.fill_diagonal(d, np.inf)
            if not d.min() > min_dist:
                return False
    except Exception:  # noqa: BLE001 - any failure on a degenerate cell means "invalid"
        return False
    return True


def _smact_available() -> bool:
    try:
        import smact  # noqa: F401
        from smact.screening import pauling_test  # noqa: F401
    except Exception:  # noqa: BLE001
        return False
    return True


@functools.lru_cache(maxsize=4096)
def _smact_valid(symbols: tuple[str, ...], counts: tuple[int, ...], use_pauling_test: bool = True,
                 include_alloys: bool = True) -> bool:
    """CDVAE ``smact_validity`` (symbols sorted by Z, counts reduced by their gcd)."""
    import smact
    from smact.screening import pauling_test

    if len(set(symbols)) == 1:
        return True
    if include_alloys and all(s in smact.metals for s in symbols):
        return True
    try:
        elems = list(smact.element_dictionary(symbols).values())
    except KeyError:  # an element smact has no data for
        return False
    electronegs = [e.pauling_eneg for e in elems]
    ox_combos = [e.oxidation_states for e in elems]
    threshold = max(counts)
    stoichs = [(c,) for c in counts]
    for ox_states in itertools.product(*ox_combos):
        cn_r = smact.neutral_ratios(ox_states, stoichs=stoichs, threshold=threshold)
        if isinstance(cn_r, tuple) and len(cn_r) == 2 and isinstance(cn_r[0], (bool, np.bool_)):
            cn_r = cn_r[1]  # smact < 3 (CDVAE's) returns (exists, ratios); smact >= 3 the ratios only
        if not cn_r:
            continue
        if use_pauling_test:
            try:
                ok = pauling_test(ox_states, electronegs)
            except TypeError:  # no electronegativity data: assume it is fine (as CDVAE)
                ok = True
        else:
            ok = True
        if ok:
            return True
    return False


def composition_valid(structure: Structure | None) -> bool | None:
    """CDVAE compositional validity (SMACT charge neutrality + Pauling electronegativity test).

    Returns None when ``smact`` is not importable, False for ``None``, an empty or a disordered
    structure or elements unknown to smact, else the result of CDVAE's ``smact_validity`` on the
    gcd-reduced composition (single-element and all-metal compositions are valid).
    """
    _check_structure_arg(structure)
    if not _smact_available():
        return None
    if structure is None or len(structure) == 0 or not structure.is_ordered:
        return False
    from pymatgen.core import Element

    counter = Counter(site.specie.symbol for site in structure)
    try:
        symbols = sorted(counter, key=lambda sym: Element(sym).Z)
    except ValueError:  # dummy species
        return False
    counts = np.array([counter[sym] for sym in symbols], np.int64)
    counts //= np.gcd.reduce(counts)
    return bool(_smact_valid(tuple(symbols), tuple(int(c) for c in counts)))


# ----------------------------------------------------------------------------- matching

def _passes_gate(s, gate: str) -> bool:
    if s is None:
        return False
    if gate == "none":
        return True
    if not structure_valid(s):
        return False
    return gate != "cdvae" or bool(composition_valid(s))


def _match_one(target, preds, gate: str, matcher) -> tuple[list, list, int]:
    from ..io.matching import ReferenceMatcher

    rms, valid, errors = [], [], 0
    ref = None  # the target reduced once for its k predictions (see xtaljax.io.matching)
    for p in preds:
        ok = _passes_gate(p, gate)
        r = None
        if ok:
            try:
                if ref is None:
                    ref = ReferenceMatcher(target, matcher=matcher)
                out = ref.rms_dist(p)
            except Exception:  # noqa: BLE001 - a matcher failure is "no match"
                out, errors = None, errors + 1
            if out is not None and math.isfinite(float(out[0])):
                r = float(out[0])
        rms.append(r)
        valid.append(bool(ok))
    return rms, valid, errors


def _matcher(stol: float, angle_tol: float, ltol: float):
    from pymatgen.analysis.structure_matcher import StructureMatcher

    return StructureMatcher(stol=stol, angle_tol=angle_tol, ltol=ltol)


def _to_dict(s):
    return None if s is None else s.as_dict()


def _from_dict(d):
    return None if d is None else Structure.from_dict(d)


def _match_chunk(start: int, targets: list, preds: list, gate: str, stol: float, angle_tol: float,
                 ltol: float) -> tuple[int, list]:
    """Worker task: structures arrive as ``as_dict()`` dicts; returns (start, [(rms, valid, errors)])."""
    matcher = _matcher(stol, angle_tol, ltol)
    out = [_match_one(_from_dict(t), [_from_dict(p) for p in ps], gate, matcher) for t, ps in zip(targets, preds)]
    return start, out


def _positive(name: str, x) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float, np.integer, np.floating)) or not (math.isfinite(x) and x > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {x!r}")
    return float(x)


def match_metrics(predictions: Sequence[Sequence[Structure | None]], targets: Sequence[Structure], *,
                  ks: Sequence[int] = (1, 20), stol: float = 0.5, angle_tol: float = 10.0, ltol: float = 0.3,
                  gate: str = "structure", workers: int = 1, progress: bool = False) -> dict[str, Any]:
    """Match rate, RMSE and validity at k samples per target (CDVAE / DiffCSP / PXRDGen protocol).

    Args:
        predictions: one list per target of predicted Structures (None for a failed sample), in
            generation order; the k samples of target i are ``predictions[i][:k]``. When fewer
            than k samples are given, the ones present are used (they also set the validity
            denominator, reported as ``n_predictions``).
        targets: ground-truth Structures.
        ks: sample counts to report (positive ints). RMS is computed for the first ``max(ks)``
            samples only.
        stol, angle_tol, ltol: ``StructureMatcher`` tolerances.
        gate: "structure" (:func:`structure_valid`), "cdvae" (structural and
            :func:`composition_valid`; without smact it falls back to structural and records a
            warning in ``warnings``) or "none". A sample failing the gate never matches.
        workers: >1 distributes chunks of targets over a spawn-context process pool (the parent
            may be running JAX threads, so never fork); 1 runs inline. A script calling this with
            ``workers > 1`` needs the usual ``if __name__ == "__main__":`` guard.
        progress: show a tqdm bar over targets.

    Returns:
        A JSON-serialisable dict with ``n_targets``, ``ks``, ``gate``, the tolerances,
        ``match_rate``/``rmse``/``validity``/``n_predictions`` keyed by ``str(k)``:
        match_rate@k = #targets with a match among the first k samples / #targets (all targets);
        rmse@k = mean over matched targets of the smallest matching RMS (None with no match);
        validity@k = fraction of the first-k predictions passing the gate (None with none).
        ``per_target`` lists ``{"index", "rms", "valid"}`` per target (rms None = no match),
        plus ``n_matcher_errors`` (matcher exceptions, counted as no match), ``warnings`` and
        ``seconds`` (wall time).
    """
    t0 = time.perf_counter()
    if isinstance(targets, IStructure) or not isinstance(targets, Sequence):
        raise ValueError("targets must be a list of pymatgen Structures")
    if isinstance(predictions, IStructure) or not isinstance(predictions, Sequence):
        raise ValueError("predictions must be a list (one per target) of lists of Structures")
    if len(predictions) != len(targets):
        raise ValueError(f"predictions and targets differ in length: {len(predictions)} != {len(targets)}")
    if len(targets) == 0:
        raise ValueError("targets is empty")
    for i, t in enumerate(targets):
        if not isinstance(t, IStructure):
            raise ValueError(f"targets[{i}] must be a pymatgen Structure, got {type(t).__name__}")
    for i, ps in enumerate(predictions):
        if isinstance(ps, (IStructure, str)) or not isinstance(ps, Sequence):
            raise ValueError(f"predictions[{i}] must be a list of Structures (or None), got {type(ps).__name__}")
        for j, p in enumerate(ps):
            _check_structure_arg(p, f"predictions[{i}][{j}]")
    if isinstance(ks, (int, np.integer)):
        ks = (ks,)
    ks = list(ks)
    if not ks or any(isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1 for k in ks):
        raise ValueError(f"ks must be a non-empty list of positive ints, got {ks!r}")
    ks = sorted({int(k) for k in ks})
    stol, angle_tol, ltol = _positive("stol", stol), _positive("angle_tol", angle_tol), _positive("ltol", ltol)
    if gate not in GATES:
        raise ValueError(f"gate must be one of {GATES}, got {gate!r}")
    if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 1:
        raise ValueError(f"workers must be an int >= 1, got {workers!r}")

    warnings_: list[str] = []
    eff_gate = gate
    if gate == "cdvae" and not _smact_available():
        eff_gate = "structure"
        warnings_.append("smact is not installed: gate 'cdvae' fell back to structural validity only")

    kmax = ks[-1]
    n = len(targets)
    preds = [list(ps[:kmax]) for ps in predictions]
    results: list = [None] * n

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n, desc="match", unit="target")
    try:
        chunk = max(1, min(_CHUNK, math.ceil(n / workers)))
        starts = list(range(0, n, chunk))
        if workers == 1 or len(starts) == 1:
            matcher = _matcher(stol, angle_tol, ltol)
            for i in range(n):
                results[i] = _match_one(targets[i], preds[i], eff_gate, matcher)
                if bar is not None:
                    bar.update(1)
        else:
            ctx = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(max_workers=min(int(workers), len(starts)), mp_context=ctx) as ex:
                futs = [ex.submit(_match_chunk, s, [_to_dict(t) for t in targets[s:s + chunk]],
                                  [[_to_dict(p) for p in ps] for ps in preds[s:s + chunk]],
                                  eff_gate, stol, angle_tol, ltol) for s in starts]
                for fut in as_completed(futs):
                    s, out = fut.result()
                    results[s:s + len(out)] = out
                    if bar is not None:
                        bar.update(len(out))
    finally:
        if bar is not None:
            bar.close()

    match_rate, rmse, validity, n_pred = {}, {}, {}, {}
    for k in ks:
        best = [min((r for r in rms[:k] if r is not None), default=None) for rms, _, _ in results]
        matched = [b for b in best if b is not None]
        n_valid = sum(sum(v[:k]) for _, v, _ in results)
        n_k = sum(len(v[:k]) for _, v, _ in results)
        match_rate[str(k)] = len(matched) / n
        rmse[str(k)] = float(np.mean(matched)) if matched else None
        validity[str(k)] = n_valid / n_k if n_k else None
        n_pred[str(k)] = n_k

    return {
        "n_targets": n, "ks": ks, "gate": gate, "stol": stol, "angle_tol": angle_tol, "ltol": ltol,
        "match_rate": match_rate, "rmse": rmse, "validity": validity, "n_predictions": n_pred,
        "per_target": [{"index": i, "rms": rms, "valid": valid} for i, (rms, valid, _) in enumerate(results)],
        "n_matcher_errors": int(sum(e for _, _, e in results)), "warnings": warnings_,
        "seconds": time.perf_counter() - t0,
    }


# ----------------------------------------------------------------------------- report

def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"{type(o).__name__} is not JSON-serialisable")


def write_report(path: str | os.PathLike, report: dict) -> Path:
    """Write ``report`` as JSON (indent 1) atomically: a temp file in the same directory, then
    ``os.replace``. Parent directories are created. Returns the path written."""
    if not isinstance(report, dict):
        raise ValueError(f"report must be a dict, got {type(report).__name__}")
    path = Path(path)
    if path.name == "" or path.is_dir():
        raise ValueError(f"report path is a directory: {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        text = json.dumps(report, indent=1, allow_nan=False, default=_json_default)
    except (TypeError, ValueError) as e:
        raise ValueError(f"report is not JSON-serialisable: {e}") from None
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path
