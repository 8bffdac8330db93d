"""Read GSAS ``.prm`` and GSAS-II ``.instprm`` instrument parameter files; write ``.instprm``.

Public functions
----------------
``read_instrument(path, bank=1, *, profile=None) -> Instrument``
    Format is detected from the content (GSAS lines start with ``INS``; GSAS-II lines are
    ``key:value``), not from the extension.
``write_instprm(instrument, path) -> Path``
    The inverse conversion to a GSAS-II ``.instprm``; ``read_instrument`` of the result gives back
    the same instrument terms.

Only constant-wavelength X-ray files are supported (GSAS ``HTYPE PXC*``, GSAS-II ``Type:PXC``).
Neutron (``PNC``), time-of-flight (``PNT``) and energy-dispersive (``PXE``) files raise a one-line
``ValueError``. Terms we cannot represent are read and, when non-zero, reported with
``warnings.warn`` naming them.

Unit and field mapping (Instrument units: see :mod:`xtaljax.core.instrument`)
--------------------------------------------------------------------------------
======================== ============================== ============================================
file field               Instrument field               conversion / source it was verified against
======================== ============================== ============================================
ICONS cols 1-10, 11-20   wavelengths [λ1] or [λ1, λ2]   Å, as is; λ2 = 0 → single line [1]
ICONS cols 21-30 (ZERO)  zero                           centideg → ° : /100 [1]
ICONS cols 41-50 (POLA)  polarization                   k = (1 − Pola)/Pola (see below) [1][2]
ICONS cols 51-55 (IPOLA) —                              ignored, as GSAS-II does [1]; warns if ≠ 0
ICONS cols 56-65 (KRAT.) line_weights [1, ratio]        I(λ2)/I(λ1), as is [1]
DETAZM                   polarization (azimuth φ)       as GSAS-II ``Azimuth`` [1][2]
PRCF GU, GV, GW, GP      u, v, w, p                     centideg² → °² : /1e4 [1][3][4]
PRCF LX, LY              x, y                           centideg → ° : /100 [1][3]
PRCF S/L, H/L            asym_sl, asym_hl               dimensionless, as is [3][5]
instprm Lam / Lam1, Lam2 wavelengths                    Å [1]
instprm I(L2)/I(L1)      line_weights [1, ratio]        as is [1]
instprm Zero             zero                           ° 2θ, as is (GSAS-II stores ICONS/100) [1]
instprm Polariz., Azim.  polarization                   k = A/B, below [2]
instprm U, V, W          u, v, w                        centideg² → °² : /1e4 [3][6]
instprm X, Y             x, y                           centideg → ° : /100 [3][6]
instprm SH/L             asym_sl = asym_hl = SH/L / 2   GSAS-II passes S/L = H/L = SH/L/2 [5]
instprm Z                —                              constant Lorentzian term; warns if ≠ 0
======================== ============================== ============================================

Polarisation. GSAS-II (``GSASIIpwd.Polarization`` [2]) multiplies intensities by
``((1−Pola)cos²φ + Pola sin²φ) cos²2θ + (1−Pola) sin²φ + Pola cos²φ`` ("1.0 fully polarized,
0.5 unpolarized"); with B = (1−Pola) sin²φ + Pola cos²φ and A = (1−Pola) cos²φ + Pola sin²φ this
is B(1 + k cos²2θ) with k = A/B, i.e. k = (1 − Pola)/Pola at φ = 0 (Pola = 0.5 → k = 1, lab
unpolarised; Pola = 0.99 → k ≈ 0.0101, synchrotron). The overall factor B is absorbed in the scale.
GSAS-II copies the GSAS ICONS POLA value straight into ``Polariz.`` [1], so the same formula is used
for ``.prm`` files. ``write_instprm`` writes Pola = 1/(1 + k), Azimuth 0.

GSAS profile functions (coefficient order from EXPGUI ``gsascmds.tcl`` ``prof-C-n`` [4]):

* type 1 ``GU GV GW asym F1 F2`` (Gaussian only: x = y = 0);
* type 2 ``GU GV GW LX LY trns asym shft GP stec ptec sfec L11 L22 L33 L12 L13 L23`` (its ``asym``
  is the old Rietveld/Howard asymmetry, not FCJ: ignored, S/L = H/L = 0);
* type 3 ``GU GV GW GP LX LY S/L H/L trns shft stec ptec sfec L11 L22 L33 L12 L13 L23``;
* type 4 ``GU GV GW GP LX ptec trns shft sfec S/L H/L eta`` + Stephens ``Shkl`` terms (y = 0);
* type 5 as type 3 with ``D1 … D6`` instead of ``L11 … L23``.

``trns``/``shft`` (transparency / sample shift), ``stec``/``ptec``/``sfec``, the ``Lij``/``Dn``/``Shkl``
anisotropic terms and type 1/2 ``asym`` are not mapped (the units of ``trns``/``shft`` could not be
verified against a source available here); non-zero values produce a warning. When a ``.prm`` holds
several profile sets (``PRCF1``, ``PRCF2``, …) the first is used, as GSAS-II does [1]; pass
``profile=n`` to choose set ``n``.

Sources
-------
[1] GSAS-II ``GSASII/GSASIIfiles.py``: ``SetPowderInstParms`` (reads ``INS  1 ICONS`` as
    ``s[:10]`` λ1, ``s[10:20]`` λ2, ``s[20:30]/100`` Zero, ``s[40:50]`` Polariz., ``s[55:65]``
    I(L2)/I(L1); GU, GV, GW = first three ``PRCF11`` values copied unscaled into U, V, W; LX, LY →
    X, Y; S/L + H/L → SH/L; ``DETAZM`` → Azimuth) and ``ReadInstprm`` (``key:value`` lines, ``;``
    separated, ``#Bank n`` headers). Its ``defaultIparms.py`` lists the lab INST_XRY values as
    ``Polariz.:0.7 … I(L2)/I(L1):0.5 … U:2.0;V:-2.0;W:5.0``.
[2] GSAS-II ``GSASIIpwd.py``: ``Polarization(Pola, Tth, Azm)``.
[3] GSAS-II ``sources/pypowder.for``: ``PYPSVFCJ`` ("CDSIG Gaussian variance, centidegrees
    squared", ``SIG = CDSIG/10000``; "CDGAM Lorenzian FWHM, centidegrees", ``GAM = CDGAM/100``;
    "SPH is S/L + H/L"); ``GSASIIpwd.getWidthsCW`` ("sig: Gaussian peak variance in centideg^2,
    gam: Lorentzian peak width in centidegrees").
[4] EXPGUI ``gsascmds.tcl`` (B. H. Toby), ``array set expgui {prof-C-1 … prof-C-5}``.
[5] GSAS-II ``sources/pypowder.for``: ``PYPSVFCJO`` calls ``PSVFCJO(…, SPH/2.0, SPH/2.0, …)``
    (S/L = H/L = SH/L/2); ``PSVFCJO`` is "parameterized as asym1=S/L asym2=H/L".
[6] GSAS-II ``GSASIImath.py``: ``getCWsig`` = U tan²θ + V tanθ + W, ``getCWgam`` = X/cosθ + Y tanθ.

Not verified here: the GP term's form (P/cos²θ, the Instrument convention, from the GSAS manual
§ CW profile functions) and the GSAS meaning of IPOLA ≠ 0.
"""

from __future__ import annotations

import math
import re
import warnings
from pathlib import Path

import numpy as np

from ..core.instrument import Instrument

__all__ = ["read_instrument", "write_instprm"]

#: GSAS CW profile coefficient names by function type (EXPGUI ``gsascmds.tcl`` ``prof-C-n``).
GSAS_PROFILE_TERMS = {
    1: ("GU", "GV", "GW", "asym", "F1", "F2"),
    2: ("GU", "GV", "GW", "LX", "LY", "trns", "asym", "shft", "GP", "stec", "ptec", "sfec",
        "L11", "L22", "L33", "L12", "L13", "L23"),
    3: ("GU", "GV", "GW", "GP", "LX", "LY", "S/L", "H/L", "trns", "shft", "stec", "ptec", "sfec",
        "L11", "L22", "L33", "L12", "L13", "L23"),
    4: ("GU", "GV", "GW", "GP", "LX", "ptec", "trns", "shft", "sfec", "S/L", "H/L", "eta"),
    5: ("GU", "GV", "GW", "GP", "LX", "LY", "S/L", "H/L", "trns", "shft", "stec", "ptec", "sfec",
        "D1", "D2", "D3", "D4", "D5", "D6"),
}
#: Terms mapped onto Instrument fields (everything else is reported when non-zero).
_MAPPED = {"GU", "GV", "GW", "GP", "LX", "LY", "S/L", "H/L"}

_FLOAT_RE = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[EeDd][-+]?\d+)?")
_ICONS_FIELDS = ((0, 10), (10, 20), (20, 30), (30, 40), (40, 50), (50, 55), (55, 65))


# ---- public API --------------------------------------------------------------------------------
def read_instrument(path, bank: int = 1, *, profile: int | None = None) -> Instrument:
    """Instrument from a GSAS ``.prm``/``.PRM``/``.ins`` or GSAS-II ``.instprm`` file.

    ``bank``: the GSAS ``INS n`` bank, or the GSAS-II ``#Bank n`` block (files without bank
    headers ignore it). ``profile``: GSAS profile set ``PRCFn`` to use (default: the first).
    Raises ``ValueError`` (one line, naming the file) for unsupported or malformed files.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise ValueError(f"{path}: cannot read instrument file ({exc.strerror or exc})") from None
    lines = [ln.rstrip("\r\n") for ln in text.splitlines()]
    content = [ln for ln in lines if ln.strip()]
    if not content:
        raise ValueError(f"{path}: empty instrument file")
    if any(ln.startswith("INS") for ln in content):
        return _read_gsas_prm(path, lines, bank, profile)
    if any(":" in ln and not ln.lstrip().startswith("#") for ln in content):
        return _read_instprm(path, lines, bank)
    raise ValueError(f"{path}: not a GSAS .prm (no 'INS' records) or GSAS-II .instprm (no 'key:value' lines)")


def write_instprm(instrument: Instrument, path) -> Path:
    """Write the instrument terms of ``instrument`` as a GSAS-II ``.instprm`` file; returns the path.

    GSAS-II has one axial-divergence term SH/L = S/L + H/L (read back as S/L = H/L = SH/L/2) and no
    GP/cos²θ term, so unequal ``asym_sl``/``asym_hl`` or a non-zero ``p`` are written approximately
    (with a warning). Sample terms (displacement, transparency, size, strain, scale, background,
    preferred orientation) are not instrument parameters and are not written.
    """
    path = Path(path)
    g = lambda name: np.asarray(getattr(instrument, name), dtype=np.float64)  # noqa: E731
    lam, wts = np.atleast_1d(g("wavelengths")), np.atleast_1d(g("line_weights"))
    if lam.size > 2:
        raise ValueError(f"{path}: a GSAS-II .instprm holds at most two wavelengths, instrument has {lam.size}")
    k = float(g("polarization"))
    if not np.isfinite(k) or k <= -1.0:
        raise ValueError(f"{path}: polarization k = {k} has no GSAS-II Polariz. equivalent (needs k > -1)")
    sl, hl, p = float(g("asym_sl")), float(g("asym_hl")), float(g("p"))
    if p != 0.0:
        warnings.warn(f"write_instprm {path.name}: GSAS-II has no P/cos²θ Gaussian term; p = {p:g} °² dropped",
                      stacklevel=2)
    if not math.isclose(sl, hl, rel_tol=1e-9, abs_tol=1e-15):
        warnings.warn(f"write_instprm {path.name}: GSAS-II has a single SH/L; S/L = {sl:g}, H/L = {hl:g} written "
                      f"as SH/L = {sl + hl:g} (reads back as S/L = H/L = {(sl + hl) / 2:g})", stacklevel=2)
    single = np.asarray(instrument.u).dtype == np.float32

    def r(v) -> str:  # shortest text that reads back to the same value at the instrument's precision
        return str(np.float32(v)) if single else repr(float(v))

    out = ["#GSAS-II instrument parameter file; do not add/delete items!", "Type:PXC"]
    if lam.size == 2:
        if wts[0] <= 0:
            raise ValueError(f"{path}: first line weight must be positive to form I(L2)/I(L1)")
        out += [f"Lam1:{r(lam[0])}", f"Lam2:{r(lam[1])}", f"I(L2)/I(L1):{r(wts[1] / wts[0])}"]
    else:
        out.append(f"Lam:{r(lam[0])}")
    out += [f"Zero:{r(g('zero'))}", f"Polariz.:{r(1.0 / (1.0 + k))}", "Azimuth:0.0",
            f"U:{r(g('u') * 1e4)}", f"V:{r(g('v') * 1e4)}", f"W:{r(g('w') * 1e4)}",
            f"X:{r(g('x') * 100.0)}", f"Y:{r(g('y') * 100.0)}", "Z:0.0", f"SH/L:{r(sl + hl)}"]
    path.write_text("\n".join(out) + "\n", encoding="utf-8")
    return path


# ---- shared helpers ----------------------------------------------------------------------------
def _unsupported_type(path: Path, htype: str) -> ValueError:
    t = htype.upper()
    tof = len(t) >= 3 and t[2] == "T"
    if t[1:2] == "N":  # PNC, PNT, PNB, SNC, ...
        what = "time-of-flight neutron" if tof else "neutron"
        return ValueError(f"{path}: {what} instrument files are not supported yet (type {htype!r})")
    if tof:
        return ValueError(f"{path}: time-of-flight instrument files are not supported yet (type {htype!r})")
    if len(t) >= 3 and t[2] == "E":
        return ValueError(f"{path}: energy-dispersive instrument files are not supported yet (type {htype!r})")
    return ValueError(f"{path}: instrument type {htype!r} is not supported (only X-ray constant wavelength, PXC)")


def _polarization_k(path: Path, pola: float, azimuth_deg: float) -> float:
    """k in 1 + k cos²2θ from GSAS-II's Polariz. and Azimuth (``GSASIIpwd.Polarization``)."""
    if not np.isfinite(pola) or not 0.0 < pola <= 1.0:
        raise ValueError(f"{path}: polarisation fraction Polariz. = {pola} must lie in (0, 1]")
    c2, s2 = math.cos(math.radians(azimuth_deg)) ** 2, math.sin(math.radians(azimuth_deg)) ** 2
    a = (1.0 - pola) * c2 + pola * s2
    b = (1.0 - pola) * s2 + pola * c2
    if b <= 1e-12:
        raise ValueError(f"{path}: Polariz. = {pola} at Azimuth = {azimuth_deg}° gives P ∝ cos²2θ (k infinite)")
    return a / b


def _build(path: Path, *, lam1, lam2, ratio, zero_deg, k, u, v, w, p, x, y, sl, hl) -> Instrument:
    if not (np.isfinite(lam1) and lam1 > 0):
        raise ValueError(f"{path}: wavelength must be a positive number of Å, got {lam1}")
    if lam2:
        if not (np.isfinite(ratio) and ratio >= 0):
            raise ValueError(f"{path}: Kα2/Kα1 intensity ratio must be ≥ 0, got {ratio}")
        lam, wts = [lam1, lam2], [1.0, ratio]
    else:
        lam, wts = [lam1], [1.0]
    for name, val in dict(zero=zero_deg, u=u, v=v, w=w, p=p, x=x, y=y, sl=sl, hl=hl).items():
        if not np.isfinite(val):
            raise ValueError(f"{path}: {name} is not a finite number ({val})")
    if sl < 0 or hl < 0:
        raise ValueError(f"{path}: axial divergence S/L = {sl}, H/L = {hl} must be ≥ 0")
    try:
        return Instrument.create(lam, wts, zero=zero_deg, polarization=k, u=u, v=v, w=w, p=p, x=x, y=y,
                                 asym_sl=sl, asym_hl=hl)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


def _warn_ignored(path: Path, what: str, terms: dict) -> None:
    bad = {k: v for k, v in terms.items() if v != 0.0}
    if bad:
        listed = ", ".join(f"{k}={v:g}" for k, v in bad.items())
        warnings.warn(f"{path.name}: ignored {what} not representable in Instrument: {listed}", stacklevel=3)


# ---- GSAS (old) .prm ---------------------------------------------------------------------------
def _floats(path: Path, text: str, what: str) -> list[float]:
    out = []
    for tok in text.split():
        try:
            out.append(float(tok.replace("D", "E").replace("d", "e")))
        except ValueError:
            found = _FLOAT_RE.findall(tok)  # run-together fixed-format numbers
            if not found or "".join(found) != tok:
                raise ValueError(f"{path}: cannot read number {tok!r} in {what}") from None
            out.extend(float(f.replace("D", "E").replace("d", "e")) for f in found)
    return out


def _icons_fields(path: Path, value: str) -> dict:
    """LAM1 LAM2 ZERO POLA IPOLA KRATIO from an ICONS value (text after column 12).

    GSAS writes fixed columns (F10, F10, F10, 10X, F10, I5, F10); GSAS-II reads them by column [1].
    Hand-written files often use free format, so columns are used only when every token lies
    inside its own field; otherwise tokens are taken in order (7 tokens: the 4th fills the 10X gap).
    """
    spans = [(m.start(), m.end()) for m in re.finditer(r"\S+", value)]
    if not spans:
        raise ValueError(f"{path}: ICONS record has no values")
    used = []
    aligned = True
    for a, b in spans:
        field = next((i for i, (lo, hi) in enumerate(_ICONS_FIELDS) if lo <= a and b <= hi), None)
        if field is None or field in used:
            aligned = False
            break
        used.append(field)
    if aligned:
        raw = [value[lo:hi].strip() for lo, hi in _ICONS_FIELDS]
        vals = []
        for i, s in enumerate(raw):
            if i == 3:
                continue
            vals.append(_floats(path, s, "ICONS")[0] if s else 0.0)
    else:
        toks = _floats(path, value, "ICONS")
        if len(toks) >= 7:
            toks = toks[:3] + toks[4:7]
        vals = (toks + [0.0] * 6)[:6]
        if len(toks) < 1:
            raise ValueError(f"{path}: ICONS record has no wavelength")
    lam1, lam2, zero, pola, ipola, kratio = vals
    return dict(lam1=lam1, lam2=lam2, zero=zero, pola=pola, ipola=ipola, kratio=kratio)


def _read_gsas_prm(path: Path, lines: list[str], bank: int, profile: int | None) -> Instrument:
    recs: dict[str, str] = {}
    for ln in lines:
        if ln.startswith("INS") and len(ln) >= 12:
            recs.setdefault(ln[:12].upper(), ln[12:])
    htype_rec = recs.get("INS   HTYPE ")
    htype = htype_rec.split()[0].upper() if htype_rec and htype_rec.split() else None
    if htype is None:
        warnings.warn(f"{path.name}: no 'INS   HTYPE' record; assuming X-ray constant wavelength (PXC)", stacklevel=3)
        htype = "PXC"
    if not htype.startswith("PXC"):
        raise _unsupported_type(path, htype)

    pre = f"INS{bank:3d}"
    icons = recs.get(f"{pre} ICONS")
    if icons is None:
        banks = sorted({int(k[3:6]) for k in recs if k[6:12] == " ICONS" and k[3:6].strip().isdigit()})
        if banks:
            raise ValueError(f"{path}: bank {bank} not found (file has bank(s) {banks})")
        raise ValueError(f"{path}: missing 'INS{bank:3d} ICONS' record (wavelength, zero, polarisation)")
    ic = _icons_fields(path, icons)
    if ic["ipola"] != 0:
        warnings.warn(f"{path.name}: ICONS IPOLA = {ic['ipola']:g} ignored (treated as 0, as GSAS-II does)",
                      stacklevel=3)
    azm_rec = recs.get(f"{pre}DETAZM")
    azimuth = _floats(path, azm_rec, "DETAZM")[0] if azm_rec and azm_rec.split() else 0.0

    # profile sets: header 'INS  nPRCFs' (s = set id, col 11; col 12 blank), lines 'INS  nPRCFsj'
    sets: dict[str, tuple[list[float], dict[int, str]]] = {}
    for key, val in recs.items():
        if not key.startswith(f"{pre}PRCF"):
            continue
        sid, line_no = key[10], key[11]
        hdr, body = sets.setdefault(sid, ([], {}))
        if line_no == " ":
            hdr.extend(_floats(path, val, f"{key.strip()} header"))
        elif line_no.isdigit():
            body[int(line_no)] = val
        else:
            raise ValueError(f"{path}: unrecognised profile record {key.strip()!r}")
    if not sets:
        raise ValueError(f"{path}: missing profile records ('{pre}PRCF1' header and coefficient lines)")
    order = sorted(sets, key=lambda s: (s != " ", s))  # old-style ' ' set first, then '1', '2', ...
    if profile is None:
        sid = order[0]
    else:
        sid = str(profile)
        if sid not in sets:
            raise ValueError(f"{path}: profile set {profile} not found (file has {[s.strip() or '1' for s in order]})")
    hdr, body = sets[sid]
    label = f"{pre}PRCF{sid}".strip()
    if len(hdr) < 2:
        raise ValueError(f"{path}: profile header {label!r} needs 'type ncoef [cutoff]'")
    ptype, ncoef = int(hdr[0]), int(hdr[1])
    if ptype not in GSAS_PROFILE_TERMS:
        raise ValueError(f"{path}: GSAS CW profile function type {ptype} is not supported (types 1-5 are)")
    coeffs: list[float] = []
    for j in sorted(body):
        coeffs.extend(_floats(path, body[j], f"{label}{j}"))
    if len(coeffs) < ncoef:
        raise ValueError(f"{path}: profile {label!r} declares {ncoef} coefficients but has {len(coeffs)}")
    names = GSAS_PROFILE_TERMS[ptype]
    need = {1: 3, 2: 5, 3: 8, 4: 11, 5: 8}[ptype]
    if ncoef < need:
        raise ValueError(f"{path}: profile type {ptype} needs at least {need} coefficients "
                         f"({' '.join(names[:need])}), {label!r} declares {ncoef}")
    coeffs = coeffs[:ncoef]
    terms = dict(zip(names, coeffs))
    extra = coeffs[len(names):]  # type 4 Stephens Shkl terms
    ignored = {k: v for k, v in terms.items() if k not in _MAPPED and k != "eta"}
    if ptype == 4:
        ignored.update({f"S#{i + 1}": v for i, v in enumerate(extra)})
        if any(extra):
            ignored["eta"] = terms["eta"]
    _warn_ignored(path, f"GSAS profile type {ptype} terms", ignored)

    return _build(path, lam1=ic["lam1"], lam2=ic["lam2"], ratio=ic["kratio"], zero_deg=ic["zero"] / 100.0,
                  k=_polarization_k(path, ic["pola"], azimuth),
                  u=terms["GU"] / 1e4, v=terms["GV"] / 1e4, w=terms["GW"] / 1e4, p=terms.get("GP", 0.0) / 1e4,
                  x=terms.get("LX", 0.0) / 100.0, y=terms.get("LY", 0.0) / 100.0,
                  sl=terms.get("S/L", 0.0), hl=terms.get("H/L", 0.0))


# ---- GSAS-II .instprm --------------------------------------------------------------------------
def _instprm_items(path: Path, lines: list[str], bank: int) -> dict[str, str]:
    has_banks = any(ln.lstrip().startswith("#") and re.match(r"#\s*Bank\s+\d+", ln.strip(), re.I) for ln in lines)
    items: dict[str, str] = {}
    active = not has_banks
    seen_banks = []
    for n, raw in enumerate(lines, 1):
        s = raw.strip()
        if not s:
            continue
        if s.startswith("#"):
            m = re.match(r"#\s*Bank\s+(\d+)", s, re.I)
            if m:
                seen_banks.append(int(m.group(1)))
                active = int(m.group(1)) == bank
            continue
        if not active:
            continue
        for part in s.split(";"):
            part = part.strip()
            if not part:
                continue
            if ":" not in part:
                raise ValueError(f"{path}: line {n}: expected 'key:value', got {part!r}")
            key, val = part.split(":", 1)
            items[key.strip()] = val.strip()
    if has_banks and bank not in seen_banks:
        raise ValueError(f"{path}: bank {bank} not found (file has bank(s) {sorted(seen_banks)})")
    return items


def _read_instprm(path: Path, lines: list[str], bank: int) -> Instrument:
    items = _instprm_items(path, lines, bank)
    if "Type" not in items:
        raise ValueError(f"{path}: missing 'Type' key (e.g. 'Type:PXC') in GSAS-II instrument file")
    itype = items["Type"].strip().split()[0] if items["Type"].strip() else ""
    if not itype.upper().startswith("PXC"):
        raise _unsupported_type(path, itype or "''")

    def num(key, default=None):
        if key not in items:
            if default is None:
                raise ValueError(f"{path}: missing key {key!r}")
            return default
        try:
            return float(items[key])
        except ValueError:
            raise ValueError(f"{path}: value of {key!r} is not a number: {items[key]!r}") from None

    if "Lam1" in items or "Lam2" in items:
        lam1, lam2, ratio = num("Lam1"), num("Lam2"), num("I(L2)/I(L1)")
    elif "Lam" in items:
        lam1, lam2, ratio = num("Lam"), 0.0, 0.0
    else:
        raise ValueError(f"{path}: missing wavelength key ('Lam', or 'Lam1'/'Lam2'/'I(L2)/I(L1)')")
    for key in ("U", "V", "W", "X", "Y", "SH/L", "Polariz."):
        num(key)  # required keys: fail with one line naming the key
    _warn_ignored(path, "GSAS-II terms", {"Z": num("Z", 0.0)})
    shl = num("SH/L")
    return _build(path, lam1=lam1, lam2=lam2, ratio=ratio, zero_deg=num("Zero", 0.0),
                  k=_polarization_k(path, num("Polariz."), num("Azimuth", 0.0)),
                  u=num("U") / 1e4, v=num("V") / 1e4, w=num("W") / 1e4, p=0.0,
                  x=num("X") / 100.0, y=num("Y") / 100.0, sl=shl / 2.0, hl=shl / 2.0)
