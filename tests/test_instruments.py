"""Reading GSAS .prm / GSAS-II .instprm instrument files (xtaljax.io.instruments).

Expected values are the raw numbers printed in the shipped files, converted by hand:
GU, GV, GW, GP (centideg²) / 1e4 → deg²; LX, LY, X, Y (centideg) / 100 → deg; ICONS zero / 100;
polarisation k = (1 − Pola) / Pola; GSAS-II SH/L split evenly into S/L and H/L.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from xtaljax.io.instruments import read_instrument, write_instprm

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
INST = DATA / "instruments"

needs_data = pytest.mark.skipif(not INST.is_dir(), reason=f"shared instrument files not found at {INST}")

FIELDS = ("zero", "polarization", "u", "v", "w", "p", "x", "y", "asym_sl", "asym_hl")
RTOL = 2e-6  # float32 default dtype


def _check(ins, wavelengths, weights, **expected):
    np.testing.assert_allclose(np.asarray(ins.wavelengths), wavelengths, rtol=RTOL)
    np.testing.assert_allclose(np.asarray(ins.line_weights), weights, rtol=RTOL)
    for name, value in expected.items():
        np.testing.assert_allclose(float(np.asarray(getattr(ins, name))), value, rtol=RTOL, atol=1e-12,
                                   err_msg=name)


def _read_quiet(path, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # shipped files carry nothing we must drop
        return read_instrument(path, **kw)


# ---- shipped files -----------------------------------------------------------------------------
LAB_CU = dict(zero=0.0, polarization=0.3 / 0.7, u=2.0e-4, v=-2.0e-4, w=5.0e-4, p=0.1e-4, x=0.0, y=0.0,
              asym_sl=0.01, asym_hl=0.01)


@needs_data
def test_lab_cu_prm():
    # ICONS 1.540500 1.544300 0.0 | 0 | POLA 0.7 IPOLA 0 KRATIO 0.5; PRCF1 type 3:
    # GU 2.0 GV -2.0 GW 5.0 GP 0.1 | LX 0 LY 0 S/L 0.01 H/L 0.01
    _check(_read_quiet(INST / "lab_cu_INST_XRY.PRM"), [1.5405, 1.5443], [1.0, 0.5], **LAB_CU)


@needs_data
def test_fap_pattern_prm_same_as_lab():
    path = DATA / "patterns" / "fap_lab_xray" / "INST_XRY.PRM"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    _check(_read_quiet(path), [1.5405, 1.5443], [1.0, 0.5], **LAB_CU)


@needs_data
def test_aps_11bm_prm():
    # ICONS 0.4132590 0.0 0.0 POLA 0.990 IPOLA 0 (0.500 ratio unused: single line);
    # type 3: GU 1.163 GV -0.126 GW 0.063 GP 0 | LX 0.173 LY 0 S/L 0.0011 H/L 0.0011
    ins = _read_quiet(INST / "aps_11bm_11bmb_8716.prm")
    _check(ins, [0.413259], [1.0], zero=0.0, polarization=0.01 / 0.99, u=1.163e-4, v=-0.126e-4, w=0.063e-4,
           p=0.0, x=0.173e-2, y=0.0, asym_sl=0.0011, asym_hl=0.0011)


@needs_data
def test_diamond_i15_prm_first_and_second_profile():
    path = INST / "diamond_i15_inst_i15_pdf_april14.prm"
    # ICONS 0.1722 0.0 ZERO 0.0568 centideg, POLA 0.950. PRCF1 is type 2 (GU GV GW LX LY trns asym ...):
    # 13.528400 3.150470 7.371720 1.932420 | 0.122605 0 0 0 ...
    _check(_read_quiet(path), [0.1722], [1.0], zero=0.0568e-2, polarization=0.05 / 0.95, u=13.5284e-4,
           v=3.15047e-4, w=7.37172e-4, p=0.0, x=1.93242e-2, y=0.122605e-2, asym_sl=0.0, asym_hl=0.0)
    # PRCF2 is type 3: GU GV GW 0, GP 0.198335 | LX LY 0, S/L 0.008700, H/L 0.014787
    _check(_read_quiet(path, profile=2), [0.1722], [1.0], u=0.0, v=0.0, w=0.0, p=0.198335e-4, x=0.0, y=0.0,
           asym_sl=0.0087, asym_hl=0.014787)


@needs_data
def test_nsls_instprm():
    # Lam 1.148407, Polariz. 0.99, U 5.9840407759, V -1.28771353531, W 0.118521878603,
    # X -0.0977791308891, Y 4.40147397286, SH/L 0.0264356231583
    ins = _read_quiet(INST / "nsls_BNL-I.instprm")
    _check(ins, [1.148407], [1.0], zero=0.0, polarization=0.01 / 0.99, u=5.9840407759e-4, v=-1.28771353531e-4,
           w=0.118521878603e-4, p=0.0, x=-0.0977791308891e-2, y=4.40147397286e-2,
           asym_sl=0.0264356231583 / 2, asym_hl=0.0264356231583 / 2)


@needs_data
def test_neutron_prm_refused():
    with pytest.raises(ValueError, match=r"ill_d1a_neutron_inst_d1a\.prm: neutron instrument files are not "
                                         r"supported yet") as exc:
        read_instrument(INST / "ill_d1a_neutron_inst_d1a.prm")
    assert "\n" not in str(exc.value)


# ---- synthetic files ---------------------------------------------------------------------------
def _prm(icons="INS  1 ICONS  1.540500  1.544300       0.0         0       0.7    0       0.5",
         htype="PXCR", header="INS  1PRCF1     3    8      0.01",
         coeffs=("INS  1PRCF11   2.000000E+00  -2.000000E+00   5.000000E+00   0.100000E+00",
                 "INS  1PRCF12   0.000000E+00   0.000000E+00   0.100000E-01   0.100000E-01")):
    lines = ["            123456789012345678901234567890123456789012345678901234567890",
             "INS   BANK      1"]
    if htype:
        lines.append(f"INS   HTYPE   {htype}")
    lines += [icons, header, *coeffs]
    return "\n".join(lines) + "\n"


def test_free_format_icons_and_detection_by_content(tmp_path):
    # the free-format ICONS layout of the brief, in a file whose extension says nothing
    path = tmp_path / "inst.txt"
    path.write_text(_prm(icons="INS  1 ICONS  1.540500  1.544300  0.0  0  0.7  0  0.5"))
    _check(_read_quiet(path), [1.5405, 1.5443], [1.0, 0.5], **LAB_CU)


def test_unmapped_terms_warn(tmp_path):
    path = tmp_path / "trns.prm"
    path.write_text(_prm(header="INS  1PRCF1     3   12      0.01",
                         coeffs=("INS  1PRCF11   2.0  -2.0   5.0   0.0",
                                 "INS  1PRCF12   0.0   1.0   0.01  0.02",
                                 "INS  1PRCF13   0.0   3.5   0.0   0.0")))
    with pytest.warns(UserWarning, match=r"shft=3\.5"):
        ins = read_instrument(path)
    _check(ins, [1.5405, 1.5443], [1.0, 0.5], y=0.01, asym_sl=0.01, asym_hl=0.02)


def test_profile_type4(tmp_path):
    # type 4: GU GV GW GP LX ptec trns shft sfec S/L H/L eta + Shkl; no LY
    path = tmp_path / "t4.prm"
    path.write_text(_prm(header="INS  1PRCF1     4   14      0.01",
                         coeffs=("INS  1PRCF11   1.0  -1.0   2.0   0.0",
                                 "INS  1PRCF12   3.0   0.0   0.0   0.0",
                                 "INS  1PRCF13   0.0   0.002 0.004 0.5",
                                 "INS  1PRCF14   0.0   0.0")))
    _check(_read_quiet(path), [1.5405, 1.5443], [1.0, 0.5], u=1e-4, v=-1e-4, w=2e-4, x=0.03, y=0.0,
           asym_sl=0.002, asym_hl=0.004)


@pytest.mark.parametrize("text, match", [
    (_prm(icons="INS  1 IRAD     3"), r"missing 'INS  1 ICONS'"),
    (_prm(coeffs=("INS  1PRCF11   2.0  -2.0  5.0  0.1",)), r"declares 8 coefficients but has 4"),
    (_prm(coeffs=("INS  1PRCF11   2.0  -2.0  abc  0.1", "INS  1PRCF12  0 0 0 0")), r"cannot read number 'abc'"),
    (_prm(header="INS  1PRCF1     7    8      0.01"), r"profile function type 7 is not supported"),
    (_prm(htype="PNTR"), r"time-of-flight neutron instrument files are not supported yet"),
    ("hello world\n", r"not a GSAS \.prm"),
])
def test_malformed_prm(tmp_path, text, match):
    path = tmp_path / "bad.prm"
    path.write_text(text)
    with pytest.raises(ValueError, match=match) as exc:
        read_instrument(path)
    assert "bad.prm" in str(exc.value) and "\n" not in str(exc.value)


def test_missing_bank(tmp_path):
    path = tmp_path / "one.prm"
    path.write_text(_prm())
    with pytest.raises(ValueError, match=r"bank 2 not found \(file has bank\(s\) \[1\]\)"):
        read_instrument(path, bank=2)


@pytest.mark.parametrize("text, match", [
    ("#GSAS-II\nType:PXC\nLam:1.5\nU:1\nV:0\nW:1\nX:0\nY:0\nPolariz.:0.5\n", r"missing key 'SH/L'"),
    ("#GSAS-II\nType:PXC\nU:1\nV:0\nW:1\nX:0\nY:0\nSH/L:0\nPolariz.:0.5\n", r"missing wavelength key"),
    ("#GSAS-II\nType:PXC\nLam:1.5;U:x\n", r"value of 'U' is not a number"),
    ("#GSAS-II\nType:PNT\nfltPath:20\n", r"time-of-flight neutron instrument files are not supported yet"),
    ("#GSAS-II\nType:PNC\nLam:1.9\n", r"neutron instrument files are not supported yet"),
    ("#GSAS-II\nLam:1.5\n", r"missing 'Type' key"),
])
def test_malformed_instprm(tmp_path, text, match):
    path = tmp_path / "bad.instprm"
    path.write_text(text)
    with pytest.raises(ValueError, match=match) as exc:
        read_instrument(path)
    assert "bad.instprm" in str(exc.value) and "\n" not in str(exc.value)


def test_instprm_banks_semicolons_and_azimuth(tmp_path):
    path = tmp_path / "two.instprm"
    path.write_text("#GSAS-II instrument parameter file\n"
                    "#Bank 1: lab\nType:PXC\nLam1:1.5405;Lam2:1.5443;I(L2)/I(L1):0.5;Zero:0.01\n"
                    "Polariz.:0.7;Azimuth:0.0\nU:2.0;V:-2.0;W:5.0;X:0.0;Y:0.0;Z:0.0;SH/L:0.002\n"
                    "#Bank 2: synchrotron, azimuth 90\nType:PXC\nLam:0.5;Zero:0.0;Polariz.:0.8;Azimuth:90\n"
                    "U:1;V:0;W:1;X:1;Y:2;SH/L:0\n")
    _check(_read_quiet(path), [1.5405, 1.5443], [1.0, 0.5], zero=0.01, polarization=0.3 / 0.7, u=2e-4,
           asym_sl=0.001, asym_hl=0.001)
    # GSAS-II P at φ = 90°: Pola cos²2θ + (1 − Pola) → k = Pola / (1 − Pola) = 4
    _check(_read_quiet(path, bank=2), [0.5], [1.0], polarization=4.0, x=0.01, y=0.02)
    with pytest.raises(ValueError, match=r"bank 3 not found"):
        read_instrument(path, bank=3)


# ---- write_instprm round trip ------------------------------------------------------------------
@needs_data
@pytest.mark.parametrize("name", ["aps_11bm_11bmb_8716.prm", "nsls_BNL-I.instprm",
                                  "diamond_i15_inst_i15_pdf_april14.prm"])
def test_write_instprm_round_trip(tmp_path, name):
    ins = _read_quiet(INST / name)
    out = write_instprm(ins, tmp_path / "out.instprm")
    assert out.read_text().startswith("#GSAS-II instrument parameter file")
    back = _read_quiet(out)
    _check(back, np.asarray(ins.wavelengths), np.asarray(ins.line_weights),
           **{f: float(np.asarray(getattr(ins, f))) for f in FIELDS})


@needs_data
def test_write_instprm_two_lines_and_lossy_terms(tmp_path):
    ins = _read_quiet(INST / "lab_cu_INST_XRY.PRM")  # has GP = 0.1 (no GSAS-II equivalent)
    with pytest.warns(UserWarning, match=r"no P/cos²θ"):
        out = write_instprm(ins, tmp_path / "lab.instprm")
    text = out.read_text()
    assert "Lam1:" in text and "Lam2:" in text and "I(L2)/I(L1):0.5" in text and "Polariz.:0.7" in text
    back = _read_quiet(out)
    _check(back, [1.5405, 1.5443], [1.0, 0.5], **{**LAB_CU, "p": 0.0})
    uneven = ins.replace(p=0.0, asym_sl=0.001, asym_hl=0.003)
    with pytest.warns(UserWarning, match=r"single SH/L"):
        back = read_instrument(write_instprm(uneven, tmp_path / "uneven.instprm"))
    _check(back, [1.5405, 1.5443], [1.0, 0.5], asym_sl=0.002, asym_hl=0.002)


# ---- the instrument drives the simulator -------------------------------------------------------
@needs_data
def test_simulates_finite_pattern():
    # Kα1 + Kα2, GP term and FCJ asymmetry: the most complete of the shipped files (one jit, ~10 s)
    import xtaljax as xj
    from pymatgen.core import Lattice, Structure

    from xtaljax.io import read_structure

    s = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    ins = _read_quiet(INST / "lab_cu_INST_XRY.PRM")
    y = np.asarray(xj.simulate(read_structure(s), ins, np.arange(10, 60, 0.01)))
    assert np.all(np.isfinite(y)) and y.max() > 0
