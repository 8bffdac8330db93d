"""CSP evaluation (xtaljax.generate.evaluate): validity, match rate / RMSE at k, workers, report I/O."""

import json

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from xtaljax.generate.evaluate import composition_valid, match_metrics, structure_valid, write_report


def rocksalt(a=5.64):
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(a), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def cscl_type(a=3.3):
    """Same NaCl composition, CsCl arrangement: must not match rock salt."""
    return Structure(Lattice.cubic(a), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def perovskite(a=3.905):
    return Structure(Lattice.cubic(a), ["Sr", "Ti", "O", "O", "O"],
                     [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])


def perturbed(s, sigma, seed=0):
    rng = np.random.default_rng(seed)
    return Structure(s.lattice, s.species, s.cart_coords + rng.normal(0, sigma, (len(s), 3)), coords_are_cartesian=True)


def squashed():
    """Two atoms 0.3 Å apart."""
    return Structure(Lattice.cubic(4.0), ["Na", "Cl"], [[0, 0, 0], [0.3 / 4.0, 0, 0]])


# ----------------------------------------------------------------------------- validity

def test_structure_valid():
    assert structure_valid(rocksalt()) and structure_valid(perovskite()) and structure_valid(cscl_type())
    assert not structure_valid(squashed())
    assert structure_valid(squashed(), min_dist=0.25)
    assert not structure_valid(None)
    # one-atom cells: judged by the distance to the atom's own periodic image
    assert structure_valid(Structure(Lattice.cubic(3.0), ["Cu"], [[0, 0, 0]]))
    assert not structure_valid(Structure(Lattice.cubic(0.4), ["Cu"], [[0, 0, 0]]), min_volume=0.0)
    # skewed cell whose shortest lattice vector (b - a, 0.36 Å) is none of a, b, c
    skew = Lattice([[5, 0, 0], [4.8, 0.3, 0], [0, 0, 5]])
    assert not structure_valid(Structure(skew, ["Cu"], [[0, 0, 0]]))
    assert not structure_valid(Structure(skew, ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]))
    # a short c axis in a multi-atom cell: image distance, not the distance matrix, catches it
    assert not structure_valid(Structure(Lattice.tetragonal(4.0, 0.3), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]))
    # volume
    assert not structure_valid(Structure(Lattice.cubic(3.0), ["Cu"], [[0, 0, 0]]), min_volume=30.0)
    with pytest.raises(ValueError):
        structure_valid("NaCl")
    with pytest.raises(ValueError):
        structure_valid(rocksalt(), min_dist=-1)


def test_composition_valid():
    r = composition_valid(rocksalt())
    try:
        import smact  # noqa: F401
    except ImportError:
        assert r is None
        pytest.skip("smact not installed")
    assert r is True
    assert composition_valid(perovskite()) is True
    assert composition_valid(Structure(Lattice.cubic(3.0), ["Na", "Na"], [[0, 0, 0], [0.5, 0.5, 0.5]])) is True  # one element
    assert composition_valid(Structure(Lattice.cubic(3.0), ["Mg", "F"], [[0, 0, 0], [0.5, 0.5, 0.5]])) is False  # not neutral
    assert composition_valid(Structure(Lattice.cubic(4.0), ["Na", "Cl", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0, 0]])) is False
    assert composition_valid(Structure(Lattice.cubic(4.0), ["Mg", "F", "F"], [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0, 0]])) is True
    assert composition_valid(Structure(Lattice.cubic(3.0), ["Cu", "Zn"], [[0, 0, 0], [0.5, 0.5, 0.5]])) is True  # alloy


# ----------------------------------------------------------------------------- matching

def test_self_perturbed_supercell_translated_and_wrong():
    t = rocksalt()
    translated = t.copy()
    translated.translate_sites(list(range(len(t))), [0.13, 0.27, 0.31])
    small, big = perturbed(t, 0.02, 1), perturbed(t, 0.06, 2)
    samples = [cscl_type(), big, small, t * (2, 1, 1), translated, t]
    r = match_metrics([samples], [t], ks=(1, 2, 3, 6))
    rms = r["per_target"][0]["rms"]
    assert rms[0] is None  # wrong arrangement
    assert all(x is not None for x in rms[1:])
    assert 0 < rms[2] < rms[1]  # perturbed copies match with rms > 0, smaller displacement -> smaller rms
    assert rms[3] == pytest.approx(0, abs=1e-8) and rms[4] == pytest.approx(0, abs=1e-8) and rms[5] == pytest.approx(0, abs=1e-8)
    assert r["per_target"][0]["valid"] == [True] * 6
    assert r["match_rate"] == {"1": 0.0, "2": 1.0, "3": 1.0, "6": 1.0}
    assert r["rmse"]["1"] is None
    assert r["rmse"]["2"] == pytest.approx(rms[1])
    assert r["rmse"]["3"] == pytest.approx(min(rms[1], rms[2]))  # the minimum over matching samples
    assert r["rmse"]["6"] == pytest.approx(0, abs=1e-8)
    assert r["validity"] == {"1": 1.0, "2": 1.0, "3": 1.0, "6": 1.0}
    assert r["n_targets"] == 1 and r["ks"] == [1, 2, 3, 6] and r["gate"] == "structure"
    assert r["seconds"] > 0 and r["n_matcher_errors"] == 0
    json.dumps(r)  # JSON-serialisable


def test_match_rate_counts_all_targets_and_rmse_is_mean_of_minima():
    a, b, c = rocksalt(), perovskite(), cscl_type()
    pa, pb = perturbed(a, 0.03, 3), perturbed(b, 0.03, 4)
    r = match_metrics([[pa, a], [pb], [a]], [a, b, c], ks=(1, 2))
    ra, rb = r["per_target"][0]["rms"][0], r["per_target"][1]["rms"][0]
    assert r["per_target"][2]["rms"] == [None]
    assert r["match_rate"]["1"] == pytest.approx(2 / 3) and r["match_rate"]["2"] == pytest.approx(2 / 3)
    assert r["rmse"]["1"] == pytest.approx((ra + rb) / 2)
    assert r["rmse"]["2"] == pytest.approx((0 + rb) / 2, abs=1e-8)
    assert r["n_predictions"] == {"1": 3, "2": 4}  # target 1 and 2 have a single sample: use what is there


def test_invalid_structure_gated():
    s = squashed()
    r = match_metrics([[s]], [s])
    assert r["match_rate"]["1"] == 0.0 and r["rmse"]["1"] is None and r["validity"]["1"] == 0.0
    assert r["per_target"][0] == {"index": 0, "rms": [None], "valid": [False]}
    r = match_metrics([[s]], [s], gate="none")
    assert r["match_rate"]["1"] == 1.0 and r["rmse"]["1"] == pytest.approx(0, abs=1e-8) and r["validity"]["1"] == 1.0


def test_k_semantics():
    t = perovskite()
    r = match_metrics([[cscl_type(), t]], [t], ks=(1, 2))
    assert r["match_rate"] == {"1": 0.0, "2": 1.0}
    assert r["rmse"]["1"] is None and r["rmse"]["2"] == pytest.approx(0, abs=1e-8)
    r = match_metrics([[t, cscl_type()]], [t], ks=(1, 2))
    assert r["match_rate"] == {"1": 1.0, "2": 1.0}
    # only max(ks) samples are evaluated; a k beyond the samples given uses what is there
    r = match_metrics([[cscl_type(), t, t]], [t], ks=(1,))
    assert r["per_target"][0]["rms"] == [None] and r["match_rate"]["1"] == 0.0
    r = match_metrics([[cscl_type(), t]], [t], ks=(20,))
    assert len(r["per_target"][0]["rms"]) == 2 and r["match_rate"]["20"] == 1.0


def test_none_predictions_and_bad_input():
    t = rocksalt()
    r = match_metrics([[None, t], [None], []], [t, t, t], ks=(1, 2), gate="none")
    assert r["per_target"][0]["valid"] == [False, True] and r["per_target"][0]["rms"][0] is None
    assert r["per_target"][1] == {"index": 1, "rms": [None], "valid": [False]}
    assert r["per_target"][2] == {"index": 2, "rms": [], "valid": []}
    assert r["match_rate"] == {"1": 0.0, "2": pytest.approx(1 / 3)}
    assert r["validity"] == {"1": 0.0, "2": pytest.approx(1 / 3)}
    for bad in [dict(predictions=[[t]], targets=[t, t]), dict(predictions=[[t], [t]], targets=[t]),
                dict(predictions=[t], targets=[t]), dict(predictions=[["x"]], targets=[t]),
                dict(predictions=[], targets=[]), dict(predictions=[[t]], targets=[None])]:
        with pytest.raises(ValueError):
            match_metrics(**bad)
    for kw in [dict(ks=()), dict(ks=(0,)), dict(gate="bogus"), dict(workers=0), dict(stol=-1.0)]:
        with pytest.raises(ValueError):
            match_metrics([[t]], [t], **kw)


def test_cdvae_gate():
    t = rocksalt()
    r = match_metrics([[t]], [t], gate="cdvae")
    assert r["gate"] == "cdvae" and r["match_rate"]["1"] == 1.0
    if composition_valid(t) is None:
        assert r["warnings"] and "smact" in r["warnings"][0]
    else:
        assert r["warnings"] == []
    assert match_metrics([[squashed()]], [squashed()], gate="cdvae")["match_rate"]["1"] == 0.0


def test_workers_match_inline():
    t = [rocksalt(), perovskite(), cscl_type(), perovskite(4.1)]
    p = [[perturbed(t[0], 0.03, 5), cscl_type()], [perovskite(), None], [rocksalt()], [perturbed(t[3], 0.04, 6), squashed()]]
    r1 = match_metrics(p, t, ks=(1, 2), workers=1)
    r2 = match_metrics(p, t, ks=(1, 2), workers=2, progress=True)
    assert r2["per_target"] == r1["per_target"]
    for key in ("match_rate", "rmse", "validity"):
        assert r2[key] == r1[key]
    assert r1["match_rate"] == {"1": 0.75, "2": 0.75}


def test_write_report_roundtrip(tmp_path):
    t = perovskite()
    r = match_metrics([[t]], [t])
    path = write_report(tmp_path / "a" / "b" / "eval.json", r)
    assert path.exists() and json.loads(path.read_text()) == r
    assert [p.name for p in path.parent.iterdir()] == ["eval.json"]  # no temp files left behind
    write_report(path, {"x": np.float64(1.5), "y": np.arange(2)})  # overwrite, numpy converted
    assert json.loads(path.read_text()) == {"x": 1.5, "y": [0, 1]}
    with pytest.raises(ValueError):
        write_report(path, {"x": float("nan")})
    with pytest.raises(ValueError):
        write_report(path, [1, 2])
    assert json.loads(path.read_text()) == {"x": 1.5, "y": [0, 1]}  # failed writes leave the old file
