"""The command line: pymatgen-compatible sticks, profiles, and one-line errors with no partial output."""

import json
import subprocess
import sys
import warnings

import numpy as np
import pytest
from conftest import nacl, shared_path

XTALJAX = [sys.executable, "-m", "xtaljax.cli"]


def run(*args, cwd=None):
    return subprocess.run([*XTALJAX, *map(str, args)], capture_output=True, text=True, timeout=300, cwd=cwd)


@pytest.fixture(scope="module")
def zno_cif(tmp_path_factory):
    from pymatgen.core import Lattice, Structure

    d = tmp_path_factory.mktemp("cif")
    s = Structure.from_spacegroup("P6_3mc", Lattice.hexagonal(3.2498, 5.2066), ["Zn", "O"], [[1 / 3, 2 / 3, 0], [1 / 3, 2 / 3, 0.3819]])
    path = d / "zno.cif"
    s.to(filename=str(path))
    return path, s


def test_sticks_json_reproduces_pymatgen(zno_cif, tmp_path):
    from pymatgen.analysis.diffraction.xrd import XRDCalculator

    path, s = zno_cif
    out = tmp_path / "sticks.json"
    r = run("simulate", path, "--sticks", "--wavelength", "CuKa", "--range", 0, 90, "--out", out)
    assert r.returncode == 0, r.stderr
    ours = json.loads(out.read_text())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = XRDCalculator("CuKa").get_pattern(s, two_theta_range=(0, 90))
    assert len(ours) == len(ref.x)
    for peak, x, y, hkls, d in zip(ours, ref.x, ref.y, ref.hkls, ref.d_hkls):
        assert abs(peak["two_theta"] - x) < 1e-4 and abs(peak["intensity"] - y) < 0.01
        assert abs(peak["d_spacing"] - d) < 1e-6
        assert [f["hkl"] for f in peak["families"]] == [list(h["hkl"]) for h in hkls]
        assert [f["multiplicity"] for f in peak["families"]] == [h["multiplicity"] for h in hkls]
        assert len(peak["hkl"]) == 4  # hexagonal: Miller-Bravais indices, as pymatgen


def test_profile_xy_and_plot(zno_cif, tmp_path):
    path, _ = zno_cif
    out, png = tmp_path / "p.xy", tmp_path / "p.png"
    r = run("simulate", path, "--range", 20, 60, "--step", 0.02, "--out", out, "--plot", png)
    assert r.returncode == 0, r.stderr
    data = np.loadtxt(out)
    assert data.shape == (2001, 2) and np.all(np.isfinite(data)) and data[:, 1].max() > 0
    assert png.stat().st_size > 10_000
    inst = shared_path("instruments", "lab_cu_INST_XRY.PRM")
    r = run("simulate", path, "--range", 20, 60, "--instrument", inst, "--out", tmp_path / "q.csv")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "q.csv").read_text().splitlines()[0].startswith("two_theta")


@pytest.mark.parametrize("content,expect", [
    ("this is not a cif\n", "cannot read structure"),
    ("data_x\n_cell_length_a 4\n_cell_length_b 4\n_cell_length_c 4\n_cell_angle_alpha 90\n_cell_angle_beta 90\n"
     "_cell_angle_gamma 90\nloop_\n_atom_site_label\n_atom_site_type_symbol\n_atom_site_fract_x\n_atom_site_fract_y\n"
     "_atom_site_fract_z\nQq1 Qq 0 0 0\n", ""),
])
def test_bad_structure_files_fail_in_one_line(tmp_path, content, expect):
    bad = tmp_path / "bad.cif"
    bad.write_text(content)
    out = tmp_path / "o.xy"
    r = run("simulate", bad, "--out", out)
    assert r.returncode != 0
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("xtaljax: error:") and expect in err[0]
    assert not out.exists() and not list(tmp_path.glob(".o.xy*"))


@pytest.mark.parametrize("args,expect", [
    (["--wavelength", "-1"], "wavelength must be a positive"),
    (["--wavelength", "XyKa"], "unknown wavelength"),
    (["--range", 60, 20], "--range"),
    (["--step", 0], "--step"),
    (["--out", "x.pdf"], "--out"),
])
def test_bad_options_fail_in_one_line(zno_cif, tmp_path, args, expect):
    path, _ = zno_cif
    r = run("simulate", path, *args, cwd=tmp_path)
    assert r.returncode == 2
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and expect in err[0], r.stderr


def test_missing_file(tmp_path):
    r = run("simulate", tmp_path / "nope.cif")
    assert r.returncode == 2 and "no such file" in r.stderr


def test_demo_runs_and_reports(tmp_path):
    r = run("demo", "--out", tmp_path / "demo")
    assert r.returncode == 0, r.stderr
    summary = json.loads((tmp_path / "demo" / "fap_demo.json").read_text())
    assert 0 < summary["rwp_gsas2"] < 100 and summary["n_points"] == 5751
    assert (tmp_path / "demo" / "fap_fit.png").stat().st_size > 20_000
    assert "Rwp" in r.stdout
    res = json.loads((tmp_path / "demo" / "solve" / "result.json").read_text())  # the shipped generator's part
    assert res["composition"] == "LaAlO3" and res["candidates"] and res["candidates"][0]["rwp"] is not None
    assert "best candidate vs the structure the pattern was simulated from" in r.stdout


def test_decompose_background_file_must_cover_the_range(zno_cif, tmp_path):
    path, _ = zno_cif
    tt = np.arange(20.0, 40.0, 0.02)
    np.savetxt(tmp_path / "p.xy", np.column_stack([tt, np.full(tt.size, 100.0)]))
    np.savetxt(tmp_path / "b.xy", np.column_stack([tt[250:], np.full(tt.size - 250, 90.0)]))
    r = run("decompose", tmp_path / "p.xy", "--phase", path, "--wavelength", "CuKa", "--background-file",
            tmp_path / "b.xy", "--out", tmp_path / "o")
    assert r.returncode == 2
    err = [ln for ln in r.stderr.strip().splitlines() if not ln.startswith("decomposing")]
    assert len(err) == 1 and "covers 2θ 25–39.98°" in err[0], r.stderr
