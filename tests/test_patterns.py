"""Measured-pattern readers/writers (xtaljax.io.patterns): shipped files, synthetic formats, errors."""

import math
import struct
from pathlib import Path

import numpy as np
import pytest

from xtaljax.io.patterns import SIGMA_RULE, STD_SIGMA_RULE, Pattern, read_pattern, write_pattern

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shipped(*parts) -> Path:
    p = DATA.joinpath("patterns", *parts)
    if not p.exists():
        pytest.skip(f"shared data not found: {p}")
    return p


def raises(path, match, **kw):
    """read_pattern(path) must raise a one-line ValueError naming the file and matching `match`."""
    with pytest.raises(ValueError, match=match) as ei:
        read_pattern(path, **kw)
    msg = str(ei.value)
    assert "\n" not in msg
    assert str(path) in msg
    return msg


# ---------------------------------------------------------------------------------------------
# shipped data; intensities below were read by eye from the file text / bytes


def test_fap_gsas_std():
    p = read_pattern(shipped("fap_lab_xray", "FAP.XRA"))
    # header: BANK 1  5753  576 CONST 1500 2 0 0 STD  -> 15 .. 130.04 step 0.02
    assert len(p) == 5753 and p.meta["bank"].split()[2] == "5753"
    assert p.two_theta[0] == 15.0 and p.two_theta[-1] == 130.04
    assert p.meta["step"] == 0.02 and np.allclose(np.diff(p.two_theta), 0.02, rtol=0, atol=1e-12)
    assert p.meta["format"] == "gsas-std" and p.wavelength is None
    np.testing.assert_array_equal(p.intensity[:5], [609, 612, 673, 619, 627])
    np.testing.assert_array_equal(p.intensity[10:13], [569, 602, 591])  # second record
    # last record: "      84       0       0 ..." -> point 5751 is 84, 5752-5753 are 0, rest is padding
    np.testing.assert_array_equal(p.intensity[-3:], [84, 0, 0])
    assert p.sigma[0] == math.sqrt(609)  # n = 1 everywhere (blank first 2 chars)
    np.testing.assert_array_equal(p.sigma[-2:], [1.0, 1.0])  # sqrt(max(0, 1))
    assert p.meta["sigma_source"] == STD_SIGMA_RULE and p.meta["n_obs_max"] == 1


def test_lab6_gsas_std_fractional_header():
    p = read_pattern(shipped("lab6_srm660", "NIST660CBI.gsas"))
    # BANK 1 8378 838 CONST 1500.66 1.31303 0 0 STD ; last record holds 8 values
    assert len(p) == 8378
    assert p.two_theta[0] == 15.0066
    assert p.two_theta[-1] == pytest.approx((1500.66 + 1.31303 * 8377) / 100, rel=1e-14)
    assert p.meta["step"] == pytest.approx(0.0131303, rel=1e-14)
    np.testing.assert_array_equal(p.intensity[:3], [2364, 2382, 2386])
    np.testing.assert_array_equal(p.intensity[8368:8370], [277, 347])  # 2nd-last record, cols 9-10
    assert p.intensity[-1] == 370
    np.testing.assert_allclose(p.sigma, np.sqrt(np.maximum(p.intensity, 1)), rtol=1e-15)


def test_lab6_bruker_raw():
    path = shipped("lab6_srm660", "LaB6_Jan2018.raw")
    assert path.read_bytes()[:7] == b"RAW1.01"
    p = read_pattern(path)
    assert p.meta["format"] == "bruker_raw" and p.meta["n_ranges"] == 1
    assert len(p) == 3040
    assert p.two_theta[0] == 10.0 and p.meta["step"] == 0.0197448
    assert p.two_theta[-1] == pytest.approx(10.0 + 3039 * 0.0197448, rel=1e-14)
    # float32 at byte 1056 = 712 + 304 + 40 (supplementary header): 00 08 e7 45 = 7393.0
    np.testing.assert_array_equal(p.intensity[:3], [7393, 7478, 7347])
    assert p.intensity[-1] == 1110  # last 4 bytes: 00 c0 8a 44
    assert p.wavelength == 1.5406 and p.meta["kalpha2"] == 1.54439 and p.meta["anode"] == "Cu"
    assert p.meta["sigma_source"] == SIGMA_RULE
    np.testing.assert_array_equal(p.sigma, np.sqrt(np.maximum(p.intensity, 1)))


def test_sucrose_fxye():
    p = read_pattern(shipped("sucrose_11bm", "11bmb_8716.fxye"))
    # BANK 1 49494 49494 CONS 50.000000 0.099987  0 0 FXYE ; x in centidegrees
    assert len(p) == 49494 and p.meta["format"] == "gsas-fxye"
    assert p.two_theta[0] == 0.5
    assert p.two_theta[-1] == pytest.approx(49.98643179, rel=1e-14)
    assert p.intensity[0] == 505.41741 and p.sigma[0] == 32.809444      # " 50.000000 505.417410 32.809444"
    assert p.intensity[-1] == 265.230908 and p.sigma[-1] == 45.182763   # " 4998.643179 265.230908 45.182763"
    assert p.meta["sigma_source"] == "file"
    assert p.wavelength == 0.413259  # "# Calibrated wavelength = 0.413259"


def test_mn2o3_csv_no_header():
    p = read_pattern(shipped("mn2o3_lab_xray", "intensity.csv"))
    assert p.meta["format"] == "csv" and len(p) == 6501
    assert p.two_theta[0] == 15.0 and p.two_theta[-1] == 80.0
    np.testing.assert_allclose(np.diff(p.two_theta), 0.01, atol=1e-9)
    assert p.intensity[0] == 13565.2742 and p.intensity[1] == 13281.836 and p.intensity[-1] == 13966.237
    assert p.sigma[0] == math.sqrt(13565.2742)


# ---------------------------------------------------------------------------------------------
# synthetic GSAS variants


def _gsas(tmp_path, name, bank, records):
    path = tmp_path / name
    path.write_text("synthetic title\n" + bank.ljust(80) + "\n" + "\n".join(r.ljust(80) for r in records) + "\n")
    return path


def test_std_observation_counts_sigma_only(tmp_path):
    # fields nnIIIIII: n=4 I=400 -> y 400 (not 100), sigma sqrt(400/4)=10; blank n -> 1; n=0 -> 1
    rec = " 4   400" + "     900" + " 2    50" + " 0    16" + "       0"
    p = read_pattern(_gsas(tmp_path, "a.gsa", "BANK 1 5 1 CONST 1000 5 0 0 STD", [rec]))
    np.testing.assert_array_equal(p.two_theta, [10.0, 10.05, 10.1, 10.15, 10.2])
    np.testing.assert_array_equal(p.intensity, [400, 900, 50, 16, 0])
    np.testing.assert_allclose(p.sigma, [10.0, 30.0, 5.0, 4.0, 1.0])
    assert p.meta["n_obs_max"] == 4


def test_std_without_type_keyword_and_inst_line(tmp_path):
    # GSAS-II defaults to STD when the BANK record names no type; line 2 may name an instrument file
    path = tmp_path / "b.raw"
    path.write_text("title\nInstrument parameter file: inst.prm\n# a comment\nBANK 1 3 1 CONST 400 1\n"
                    "      20      21      26\n")
    p = read_pattern(path)
    np.testing.assert_array_equal(p.two_theta, [4.0, 4.01, 4.02])
    np.testing.assert_array_equal(p.intensity, [20, 21, 26])


def test_esd_fxy_alt(tmp_path):
    esd = read_pattern(_gsas(tmp_path, "e.gsas", "BANK 1 3 1 CONST 2000 10 0 0 ESD",
                             ["     100      10     200      15      50       7"]))
    np.testing.assert_array_equal(esd.two_theta, [20.0, 20.1, 20.2])
    np.testing.assert_array_equal(esd.intensity, [100, 200, 50])
    np.testing.assert_array_equal(esd.sigma, [10, 15, 7])
    fxy = read_pattern(_gsas(tmp_path, "f.gsas", "BANK 1 2 2 CONST 1000 1 0 0 FXY", ["1000 4", "1001 9"]))
    np.testing.assert_array_equal(fxy.two_theta, [10.0, 10.01])
    np.testing.assert_array_equal(fxy.sigma, [2.0, 3.0])
    # ALT (synthetic only; layout per GSAS-II GetALTdata): x*3200 (8), y*1000 (7), esd*1000 (5)
    rec = "   32000" + " 100000" + "10000" + "   32064" + " 400000" + "20000"
    alt = read_pattern(_gsas(tmp_path, "g.gsas", "BANK 1 2 1 CONST 1000 2 0 0 ALT", [rec]))
    np.testing.assert_array_equal(alt.two_theta, [10.0, 10.02])
    np.testing.assert_array_equal(alt.intensity, [100.0, 400.0])
    np.testing.assert_array_equal(alt.sigma, [10.0, 20.0])


def test_gsas_errors(tmp_path):
    raises(_gsas(tmp_path, "tof.gsa", "BANK 1 2 1 SLOG 1000 2 0 0 STD", ["     100     200"]), "CONST")
    raises(_gsas(tmp_path, "short.gsa", "BANK 1 5 1 CONST 1000 2 0 0 STD", ["     100     200"]),
           "says 5 points but only 2")
    raises(_gsas(tmp_path, "fxye.gsa", "BANK 1 3 3 CONST 1000 2 0 0 FXYE", ["1000 1 1", "1002 2 1"]),
           "says 3 points but 2")
    raises(_gsas(tmp_path, "bad.gsa", "BANK 1 2 1 CONST 1000 2 0 0 STD", ["     1x0     200"]), "bad STD")


# ---------------------------------------------------------------------------------------------
# Bruker RAW


def test_bruker_raw_errors(tmp_path):
    v2 = tmp_path / "old.raw"
    v2.write_bytes(b"RAW2" + bytes(2000))
    raises(v2, "version 2")
    trunc = tmp_path / "trunc.raw"
    raw = bytearray(712 + 304)
    raw[:7] = b"RAW1.01"
    struct.pack_into("<i", raw, 12, 1)
    struct.pack_into("<ii", raw, 712, 304, 100)
    trunc.write_bytes(bytes(raw))
    raises(trunc, "truncated")


def test_bruker_raw_synthetic_roundtrip_of_layout(tmp_path):
    raw = bytearray(712 + 304 + 40 + 4 * 4)
    raw[:7] = b"RAW1.01"
    struct.pack_into("<i", raw, 12, 1)
    struct.pack_into("<5d", raw, 616, 1.5418, 1.5406, 1.5444, 1.3922, 0.5)
    struct.pack_into("<ii", raw, 712, 304, 4)
    struct.pack_into("<d", raw, 712 + 16, 20.0)
    struct.pack_into("<d", raw, 712 + 176, 0.5)
    struct.pack_into("<i", raw, 712 + 256, 40)
    struct.pack_into("<4f", raw, 712 + 304 + 40, 1.0, 4.0, 9.0, 0.0)
    path = tmp_path / "s.raw"
    path.write_bytes(bytes(raw))
    p = read_pattern(path)
    np.testing.assert_array_equal(p.two_theta, [20.0, 20.5, 21.0, 21.5])
    np.testing.assert_array_equal(p.intensity, [1, 4, 9, 0])
    np.testing.assert_array_equal(p.sigma, [1, 2, 3, 1])
    assert p.wavelength == 1.5406


# ---------------------------------------------------------------------------------------------
# XRDML (no instrument file available: hand-written after the schema as GSAS-II/xylib/xrayutilities read it)

XRDML_2X = """\ufeff<?xml version="1.0" encoding="UTF-8"?>
<xrdMeasurements xmlns="http://www.xrdml.com/XRDMeasurement/2.1"
    xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
    xsi:schemaLocation="http://www.xrdml.com/XRDMeasurement/2.1 http://www.xrdml.com/XRDMeasurement/2.1/XRDMeasurement.xsd"
    status="Completed">
  <comment><entry>Configuration=Reflection-Transmission Spinner</entry></comment>
  <sample type="To be analyzed"><id>LaB6</id><name>SRM 660c</name></sample>
  <xrdMeasurement measurementType="Scan" status="Completed" sampleMode="Reflection">
    <usedWavelength intended="K-Alpha 1">
      <kAlpha1 unit="Angstrom">1.5405980</kAlpha1>
      <kAlpha2 unit="Angstrom">1.5444260</kAlpha2>
      <kBeta unit="Angstrom">1.3922500</kBeta>
      <ratioKAlpha2KAlpha1>0.5000</ratioKAlpha2KAlpha1>
    </usedWavelength>
    <incidentBeamPath><radius unit="mm">240.00</radius>
      <xRayTube id="1" name="Cu LFF"><tension unit="kV">45</tension><current unit="mA">40</current>
      <anodeMaterial>Cu</anodeMaterial></xRayTube></incidentBeamPath>
    <scan appendNumber="0" mode="Continuous" scanAxis="Gonio" status="Completed">
      <header><startTimeStamp>2019-06-19T09:38:13+02:00</startTimeStamp>
        <endTimeStamp>2019-06-19T09:58:13+02:00</endTimeStamp><author><name>User-1</name></author></header>
      <dataPoints>
        <positions axis="2Theta" unit="deg"><startPosition>10.0000</startPosition><endPosition>10.0800</endPosition></positions>
        <positions axis="Omega" unit="deg"><startPosition>5.0000</startPosition><endPosition>5.0400</endPosition></positions>
        <commonCountingTime unit="seconds">0.50</commonCountingTime>
        <beamAttenuationFactors>1 1 10 10 1</beamAttenuationFactors>
        <counts unit="counts">100 400 25 0 9</counts>
      </dataPoints>
    </scan>
  </xrdMeasurement>
</xrdMeasurements>
"""

XRDML_1X = """<?xml version="1.0" encoding="UTF-8"?>
<xrdMeasurements xmlns="http://www.xrdml.com/XRDMeasurement/1.0" status="Completed">
  <sample><id>x</id></sample>
  <xrdMeasurement measurementType="Scan">
    <usedWavelength intended="K-Alpha"><kAlpha1 unit="Angstrom">1.5405600</kAlpha1></usedWavelength>
    <scan scanAxis="2Theta-Omega" status="Completed">
      <dataPoints>
        <positions axis="2Theta" unit="deg"><listPositions>20.0 20.5 21.5</listPositions></positions>
        <positions axis="Omega" unit="deg"><commonPosition>10.0</commonPosition></positions>
        <commonCountingTime unit="seconds">1.0</commonCountingTime>
        <intensities unit="counts">4 16 64</intensities>
      </dataPoints>
    </scan>
  </xrdMeasurement>
</xrdMeasurements>
"""


def test_xrdml_counts_with_attenuation(tmp_path):
    path = tmp_path / "scan.xrdml"
    path.write_text(XRDML_2X, encoding="utf-8")
    p = read_pattern(path)
    assert p.meta["format"] == "xrdml" and p.meta["intensity_element"] == "counts"
    np.testing.assert_allclose(p.two_theta, [10.0, 10.02, 10.04, 10.06, 10.08], atol=1e-12)
    np.testing.assert_array_equal(p.intensity, [100, 400, 250, 0, 9])          # counts * attenuation
    np.testing.assert_allclose(p.sigma, [10, 20, 50, 10, 3])                   # f * sqrt(max(c, 1))
    assert p.wavelength == 1.540598 and p.meta["kalpha2"] == 1.544426 and p.meta["sample"] == "LaB6"
    assert p.meta["counting_time"] == 0.5


def test_xrdml_intensities_list_positions(tmp_path):
    path = tmp_path / "old.xml"
    path.write_text(XRDML_1X)
    p = read_pattern(path)
    np.testing.assert_array_equal(p.two_theta, [20.0, 20.5, 21.5])
    np.testing.assert_array_equal(p.intensity, [4, 16, 64])
    np.testing.assert_array_equal(p.sigma, [2, 4, 8])
    assert p.wavelength == 1.54056


def test_xrdml_errors(tmp_path):
    no2t = tmp_path / "omega.xrdml"
    no2t.write_text(XRDML_1X.replace('axis="2Theta"', 'axis="Chi"'))
    raises(no2t, "2Theta")
    broken = tmp_path / "broken.xrdml"
    broken.write_text(XRDML_1X[:300])
    raises(broken, "not valid XML")


# ---------------------------------------------------------------------------------------------
# plain text, detection, round trips


def test_xy_comments_header_wavelength(tmp_path):
    path = tmp_path / "a.dat"
    path.write_text("! exported\n# wavelength = 1.5406 A\n2theta  counts  esd\n"
                    "10.0 100 9 # note\n10.1\t400\t21\n\n10.2, 900, 31\n")
    p = read_pattern(path)
    assert p.meta["format"] == "xy" and p.meta["header"] == ["2theta  counts  esd"]
    np.testing.assert_array_equal(p.intensity, [100, 400, 900])
    np.testing.assert_array_equal(p.sigma, [9, 21, 31])
    assert p.wavelength == 1.5406 and p.meta["sigma_source"] == "file"


def test_content_beats_extension_and_fmt_overrides(tmp_path):
    gsas = _gsas(tmp_path, "looks_like.txt", "BANK 1 2 1 CONST 1000 2 0 0 STD", ["     100     200"])
    assert read_pattern(gsas).meta["format"] == "gsas-std"
    csv = tmp_path / "table.xy"
    csv.write_text("two_theta,intensity\n10,1\n11,2\n")
    p = read_pattern(csv)
    assert p.meta["format"] == "csv" and p.meta["header"] == ["two_theta,intensity"]
    raises(gsas, "not valid XML", fmt="xrdml")
    raises(csv, "no GSAS BANK", fmt="gsas")
    raises(csv, "unknown format 'foo'", fmt="foo")


def _pattern():
    x = np.round(np.arange(20.0, 20.5, 0.01), 10)
    y = 1000.0 / (1 + ((x - 20.25) / 0.05) ** 2) + 7.25
    return Pattern(x, y, np.sqrt(y) * 1.1, wavelength=1.5406, source="synthetic", meta={"k": 1})


@pytest.mark.parametrize("name", ["out.xy", "out.csv", "out.xye"])
def test_roundtrip(tmp_path, name):
    p = _pattern()
    q = read_pattern(write_pattern(p, tmp_path / name))
    np.testing.assert_array_equal(q.two_theta, p.two_theta)
    np.testing.assert_array_equal(q.intensity, p.intensity)
    np.testing.assert_array_equal(q.sigma, p.sigma)
    assert q.meta["sigma_source"] == "file"
    if name.endswith(".csv"):
        assert (tmp_path / name).read_text().splitlines()[0] == "two_theta,intensity,sigma"
        assert q.wavelength is None  # csv carries no wavelength
    else:
        assert q.wavelength == 1.5406


def test_roundtrip_arrays_two_columns(tmp_path):
    x, y = np.array([5.0, 5.5, 6.0]), np.array([0.0, 4.0, 2.25])
    out = write_pattern((x, y), tmp_path / "two.csv")
    assert out.read_text().splitlines() == ["two_theta,intensity", "5.0,0.0", "5.5,4.0", "6.0,2.25"]
    q = read_pattern(out)
    np.testing.assert_array_equal(q.sigma, [1.0, 2.0, 1.5])
    assert q.meta["sigma_source"] == SIGMA_RULE
    with pytest.raises(ValueError, match="extension"):
        write_pattern((x, y), tmp_path / "x.gsas")
    with pytest.raises(ValueError, match="not strictly ascending"):
        write_pattern((x[::-1].copy(), y), tmp_path / "d.xy")


def test_pattern_restrict_weights_immutable():
    p = _pattern()
    r = p.restrict(20.1, 20.2)
    assert r.two_theta[0] == 20.1 and r.two_theta[-1] == 20.2 and len(r) == 11  # inclusive ends
    assert r.wavelength == p.wavelength and r.meta["restricted"] == (20.1, 20.2)
    with pytest.raises(ValueError, match="no data points"):
        p.restrict(30, 40)
    with pytest.raises(ValueError, match="start"):
        p.restrict(20.3, 20.2)
    q = Pattern([1.0, 2.0, 3.0], [4.0, 0.0, -3.0], [2.0, 0.0, -1.0])
    np.testing.assert_array_equal(q.weights(), [0.25, 0.0, 0.0])  # sigma <= 0 -> weight 0
    np.testing.assert_array_equal(Pattern([1.0, 2.0], [4.0, 0.0]).sigma, [2.0, 1.0])  # default rule
    with pytest.raises(ValueError):
        q.two_theta[0] = 5.0


# ---------------------------------------------------------------------------------------------
# bad input


def test_errors(tmp_path):
    def w(name, text):
        path = tmp_path / name
        path.write_text(text)
        return path

    raises(tmp_path / "missing.xy", "file not found")
    raises(w("empty.xy", ""), "empty file")
    raises(w("blank.xy", "  \n\n"), "empty file")
    raises(w("words.xy", "two theta intensity\nno numbers here\n"), "no numeric data")
    raises(w("nan.xy", "10 1\n11 nan\n12 3\n"), "non-finite intensity .* line 2")
    raises(w("inf.csv", "10,1\ninf,2\n"), "non-finite 2θ")
    raises(w("zigzag.xy", "10 1\n12 2\n11 3\n"), "not strictly ascending: decreases at line 3")
    raises(w("dup.xy", "10 1\n10 2\n"), "repeated")
    rad = "\n".join(f"{t} {i}" for i, t in enumerate(np.linspace(0.1, 2.5, 30)))
    raises(w("rad.xy", rad), "radians")
    raises(w("one.xy", "10\n11\n"), "1 column")
    raises(w("four.xy", "10 1 2 3\n11 1 2 3\n"), "4 column")
    raises(w("ragged.xy", "10 1 1\n11 2\n"), "line 2 has 2 column")
    raises(w("late_text.xy", "10 1\n11 2\nEND\n"), "non-numeric data at line 3")
    raises(w("junk.foo", "hello\nworld\n"), "unknown format")
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x00\x01\x02\x03" * 50)
    raises(junk, "unknown format")


def test_descending_is_reversed(tmp_path):
    path = tmp_path / "desc.xy"
    path.write_text("12 3\n11 2\n10 1\n")
    p = read_pattern(path)
    np.testing.assert_array_equal(p.two_theta, [10, 11, 12])
    np.testing.assert_array_equal(p.intensity, [1, 2, 3])
    assert p.meta["reversed"] is True
