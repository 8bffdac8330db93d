"""Measured powder patterns in and out: plain xy/csv, GSAS raw files, Bruker RAW1.01, PANalytical XRDML.

Host-side NumPy only (no JAX); never jitted.

API
---
``read_pattern(path, fmt=None) -> Pattern`` and ``write_pattern(pattern_or_arrays, path, fmt=None)``.
A :class:`Pattern` holds ``two_theta`` (degrees, strictly ascending), ``intensity``, ``sigma`` (esd),
``wavelength`` (Å, only when the file states one), ``source`` (the path) and ``meta`` (a dict).

Format detection: from the content first (``RAW1.01`` magic, XML/``www.xrdml.com``, a GSAS ``BANK``
record after the title line, else a numeric table: csv when the data rows use commas, xy otherwise),
then from the extension; ``fmt`` overrides both.  Accepted ``fmt`` names: ``xy`` (aliases ``xye``,
``dat``, ``txt``), ``csv``, ``gsas`` (``gsa``, ``gss``, ``xra``, ``fxye``, ``std``, ``esd``, ``alt``),
``bruker_raw`` (``raw``, ``bruker``), ``xrdml`` (``xml``).

Uncertainties (``sigma``)
-------------------------
* taken from the file where it has one (xye/csv third column, GSAS ESD/FXYE/ALT);
* GSAS STD: ``sqrt(max(I, 1) / n)`` with ``n`` the number of observations in the field (see below);
* everything else: :data:`SIGMA_RULE` = ``sqrt(max(y, 1))`` (Poisson, floored at one count so that
  zero or negative counts do not get infinite weight).  For data that are not raw counts (scaled,
  background-subtracted) this is only a placeholder; ``meta["sigma_source"]`` says which rule was used.
* XRDML: ``sigma = f * sqrt(max(c, 1))`` with ``c`` the raw counts and ``f`` the beam attenuation factor
  (``f = 1`` when the file has none).

:meth:`Pattern.weights` returns ``1/sigma**2`` and **zero weight** for points with ``sigma <= 0``
(they are excluded from a fit rather than raising), the convention GSAS-II uses for bad points.

Formats and what they were checked against
------------------------------------------
* **xy / xye / dat / txt**: 2 columns (2θ, y) or 3 (2θ, y, esd), separated by whitespace and/or
  commas; lines starting with ``#`` or ``!`` are comments (text after ``#``/``!`` on a data line is
  dropped too); non-numeric lines *before* the first data row are kept as ``meta["header"]``; a
  non-numeric line after that is an error.  ``wavelength = 1.5406`` (also ``wavelength: ...``) in a
  comment/header line sets ``wavelength``.
* **csv**: the same reader, with or without a header row (the shipped Mn2O3 ``intensity.csv`` has
  none: ``15,13565.2742`` CRLF rows, 15-80° step 0.01, 6501 points).
* **GSAS raw** (``.gsas .gsa .gss .XRA .raw .fxye``) — verified against GSAS-II
  ``GSASII/imports/G2pwd_fxye.py`` (``GSAS_ReaderClass``, AdvancedPhotonSource/GSAS-II) and the shipped
  files.  Line 1 is a title, line 2 may be ``Instrument parameter file:...``, ``#`` lines are comments,
  then ``BANK ibank nchan nrec BINTYP bcoef1 bcoef2 bcoef3 bcoef4 TYPE``.  Only constant-wavelength
  ``BINTYP`` ``CONST``/``CONS`` is read (TOF ``SLOG``/``RALF``/``TIME_MAP`` raise); 2θ start and step
  are ``bcoef1/100`` and ``bcoef2/100`` (centidegrees).  Only the first bank is read
  (``meta["n_banks"]`` counts them).  ``TYPE`` (last token, default ``STD`` as in GSAS-II):

  - ``STD``: 10 fields of 8 characters per 80-character record, Fortran ``(10(I2,F6.0))``: the first
    2 characters are the number of observations ``n`` (blank or 0 means 1), the next 6 the intensity.
    As in current GSAS-II (``GetSTDdata``: ``ni = max(sint(S[i:i+2]),1)``, ``vi = yi/ni``, ``y=yi``,
    ``w=1/vi``) the intensity is **not** divided by ``n``; only the variance is ``I/n``, so
    ``sigma = sqrt(max(I, 1)/n)``.  (Older GSAS-II revisions used ``sqrt(I*n)``; the current one uses
    ``I/n``, which is the variance of a mean of ``n`` counts.)  Exactly ``nchan`` values are read:
    GSAS-II's ``if j < Nch`` keeps only ``nchan - 1`` of them, which we take to be an off-by-one
    there — the header of FAP.XRA (``BANK 1 5753 576 CONST 1500 2 0 0 STD``; 15-130.04° step 0.02 is
    exactly 5753 points) agrees with us.  Zero-padded fields after ``nchan`` are ignored.
  - ``ESD``: 5 pairs of 8-character (intensity, esd) fields per record (GSAS-II ``GetESDdata``).
  - ``FXYE``: free-format rows ``2θ(centidegrees) intensity esd`` (GSAS-II ``GetFXYEdata``);
    ``FXY`` the same without esd.  The row count must equal ``nchan``.
  - ``ALT``: 4 groups of 20 characters per record, ``x`` (8 chars, centidegrees*32, so ``/3200``),
    ``y`` (7 chars, ``/1000``), esd (5 chars, ``/1000``) — following GSAS-II ``GetALTdata`` (which
    slices the esd as 6 characters, overlapping the next group; we use 5 so that 4 groups fit in
    80 columns).  **Not verified against any real ALT file** (none available).
* **Bruker RAW1.01** ("RAW ver. 3"): verified against GSAS-II ``G2pwd_BrukerRAW.py`` (``ver. 3``),
  xylib ``xylib/brucker_raw.cpp`` (``load_version1_01``, after the DIFFRAC^plus XCH V.5.0 manual,
  appendix A) and the shipped ``LaB6_Jan2018.raw``.  File header 712 bytes: ``int32`` range count at
  12, date at 16, time at 26, sample id at 326, anode at 608, ``float64`` Kα mean/Kα1/Kα2/Kβ/Kα2:Kα1
  at 616..648.  Range header (304 bytes) at 712: ``int32`` steps at +4, ``float64`` start 2θ at +16,
  step at +176, used λ at +240, ``int32`` supplementary-header length at +256; then ``steps``
  little-endian ``float32`` counts.  ``wavelength`` = Kα1; only the first range is read
  (``meta["n_ranges"]``).  RAW v1/v2/v4 raise (not supported).
* **PANalytical XRDML**: following GSAS-II ``G2pwd_Panalytical.py``, xylib ``xylib/xrdml.cpp`` and
  xrayutilities ``io/panalytical_xml.py``: ``xrdMeasurements/xrdMeasurement/scan/dataPoints`` with
  ``positions axis="2Theta"`` (``startPosition``/``endPosition`` → evenly spaced, or
  ``listPositions``), ``intensities`` (XRDML 1.x, already corrected for attenuation) or ``counts``
  (2.x, multiplied by ``beamAttenuationFactors`` when present, as xrayutilities does; GSAS-II
  ignores the factors).  ``wavelength`` = ``usedWavelength/kAlpha1``.  First scan only
  (``meta["n_scans"]``).  **No real instrument file was available**: checked only against
  hand-written files that follow the schema as those readers use it.

Errors: every problem with a file raises ``ValueError("<path>: <problem>")`` on one line: missing or
empty file, no numeric data, NaN/inf, 2θ not strictly ascending (a wholly *descending* pattern is
reversed and ``meta["reversed"] = True``), 2θ that look like radians (≥ 10 points, all in [0, 3.2)),
wrong number of columns, unknown format, and format-specific damage.
"""

from __future__ import annotations

import math
import re
import struct
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

__all__ = ["FORMATS", "SIGMA_RULE", "STD_SIGMA_RULE", "Pattern", "read_pattern", "write_pattern"]

SIGMA_RULE = "sqrt(max(y, 1))"
STD_SIGMA_RULE = "sqrt(max(I, 1) / n)"  # GSAS STD: intensity NOT divided by n, variance I/n
FORMATS = ("xy", "csv", "gsas", "bruker_raw", "xrdml")

_FMT_ALIASES = {
    "xy": "xy", "xye": "xy", "dat": "xy", "txt": "xy", "asc": "xy",
    "csv": "csv",
    "gsas": "gsas", "gsa": "gsas", "gss": "gsas", "gda": "gsas", "xra": "gsas", "fxye": "gsas",
    "fxy": "gsas", "std": "gsas", "esd": "gsas", "alt": "gsas",
    "bruker_raw": "bruker_raw", "bruker": "bruker_raw", "raw": "bruker_raw",
    "xrdml": "xrdml", "xml": "xrdml",
}
# extension fallback (".raw" is GSAS or Bruker: decided by content only)
_EXT_FORMAT = {
    ".xy": "xy", ".xye": "xy", ".dat": "xy", ".txt": "xy", ".asc": "xy", ".csv": "csv",
    ".gsas": "gsas", ".gsa": "gsas", ".gss": "gsas", ".gda": "gsas", ".xra": "gsas", ".fxye": "gsas",
    ".xrdml": "xrdml",
}
_RADIANS_MIN_POINTS = 10
_RADIANS_MAX = 3.2
_WAVELENGTH_RE = re.compile(r"(?i)wave\s*length[^=:\n]{0,30}[=:]\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)")


def _sigma_rule(y: np.ndarray) -> np.ndarray:
    return np.sqrt(np.maximum(y, 1.0))


def _frozen(a) -> np.ndarray:
    a = np.array(a, dtype=np.float64).reshape(-1) if np.ndim(a) <= 1 else np.array(a, dtype=np.float64)
    a.setflags(write=False)
    return a


@dataclass(frozen=True, eq=False)
class Pattern:
    """A measured powder pattern (host-side NumPy arrays, float64, read-only).

    ``sigma`` may be omitted (``None``): it is then :data:`SIGMA_RULE` = ``sqrt(max(y, 1))``.
    Invariants (checked on construction, ``ValueError`` otherwise): 1-D arrays of equal length ≥ 1,
    all finite, ``two_theta`` strictly ascending.
    """

    two_theta: np.ndarray
    intensity: np.ndarray
    sigma: np.ndarray | None = None
    wavelength: float | None = None
    source: str = ""
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        who = self.source or "Pattern"
        x, y = _frozen(self.two_theta), _frozen(self.intensity)
        s = _frozen(_sigma_rule(y) if self.sigma is None else self.sigma)
        for name, a in (("two_theta", x), ("intensity", y), ("sigma", s)):
            if a.ndim != 1:
                raise ValueError(f"{who}: {name} must be 1-D, got shape {a.shape}")
            if a.size == 0:
                raise ValueError(f"{who}: no data points")
            if a.size != x.size:
                raise ValueError(f"{who}: {name} has {a.size} points, two_theta has {x.size}")
            bad = np.flatnonzero(~np.isfinite(a))
            if bad.size:
                raise ValueError(f"{who}: non-finite {name} at point {bad[0]} ({a[bad[0]]})")
        steps = np.diff(x)
        bad = np.flatnonzero(steps <= 0)
        if bad.size:
            i = bad[0]
            raise ValueError(f"{who}: two_theta not strictly ascending at point {i + 1} ({x[i]} -> {x[i + 1]})")
        wl = self.wavelength
        if wl is not None:
            wl = float(wl)
            if not (math.isfinite(wl) and wl > 0):
                raise ValueError(f"{who}: wavelength must be a positive number, got {self.wavelength!r}")
        object.__setattr__(self, "two_theta", x)
        object.__setattr__(self, "intensity", y)
        object.__setattr__(self, "sigma", s)
        object.__setattr__(self, "wavelength", wl)
        object.__setattr__(self, "source", str(self.source))
        object.__setattr__(self, "meta", dict(self.meta))

    def __len__(self) -> int:
        return int(self.two_theta.size)

    def __repr__(self) -> str:
        x = self.two_theta
        wl = "" if self.wavelength is None else f", wavelength={self.wavelength}"
        src = f", source={self.source!r}" if self.source else ""
        return f"Pattern({x.size} points, 2θ {x[0]:g}–{x[-1]:g}°{wl}{src})"

    def restrict(self, start: float, stop: float) -> "Pattern":
        """The points with ``start <= 2θ <= stop`` (both ends inclusive), as a new Pattern.

        ``ValueError`` if ``start > stop`` or if no point falls in the range.
        """
        start, stop = float(start), float(stop)
        if not start <= stop:
            raise ValueError(f"{self.source or 'Pattern'}: restrict range start {start} > stop {stop}")
        keep = (self.two_theta >= start) & (self.two_theta <= stop)
        if not keep.any():
            raise ValueError(f"{self.source or 'Pattern'}: no data points in 2θ range [{start}, {stop}] "
                             f"(data span {self.two_theta[0]}–{self.two_theta[-1]})")
        meta = dict(self.meta, restricted=(start, stop))
        return replace(self, two_theta=self.two_theta[keep], intensity=self.intensity[keep],
                       sigma=self.sigma[keep], meta=meta)

    def weights(self) -> np.ndarray:
        """``1/sigma**2``; points with ``sigma <= 0`` get weight 0 (excluded, GSAS-II's convention)."""
        s = self.sigma
        w = np.zeros_like(s)
        ok = s > 0
        w[ok] = 1.0 / (s[ok] * s[ok])
        return w


# ----------------------------------------------------------------------------------------------
# reading


def _fail(path, problem: str):
    problem = " ".join(str(problem).split())  # one line
    raise ValueError(f"{path}: {problem}")


def _finish(path, x, y, s, *, fmt: str, sigma_source: str, wavelength=None, meta=None, where=None) -> Pattern:
    """Common checks on parsed columns; builds the Pattern.  ``where[i]`` names point i (e.g. 'line 12')."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    s = _sigma_rule(y) if s is None else np.asarray(s, dtype=np.float64)
    meta = dict(meta or {})

    def at(i):
        return where[i] if where is not None else f"point {i}"

    if x.size == 0:
        _fail(path, "no numeric data")
    if not (x.size == y.size == s.size):
        _fail(path, f"column lengths differ (2θ {x.size}, intensity {y.size}, sigma {s.size})")
    for name, a in (("2θ", x), ("intensity", y), ("sigma", s)):
        bad = np.flatnonzero(~np.isfinite(a))
        if bad.size:
            _fail(path, f"non-finite {name} value {a[bad[0]]} at {at(bad[0])} ({bad.size} such values)")
    if x.size >= _RADIANS_MIN_POINTS and x.min() >= 0 and x.max() < _RADIANS_MAX:
        _fail(path, f"2θ values span {x.min():g}–{x.max():g}: this looks like radians; "
                    f"xtaljax wants degrees (convert with numpy.degrees)")
    if x.size > 1:
        d = np.diff(x)
        if np.all(d < 0):
            x, y, s = x[::-1], y[::-1], s[::-1]
            meta["reversed"] = True
        else:
            bad = np.flatnonzero(d <= 0)
            if bad.size:
                i = bad[0]
                what = "repeated" if d[i] == 0 else "decreases"
                _fail(path, f"2θ not strictly ascending: {what} at {at(i + 1)} ({x[i]:g} -> {x[i + 1]:g})")
    meta.setdefault("format", fmt)
    meta["sigma_source"] = sigma_source
    return Pattern(x, y, s, wavelength=wavelength, source=str(path), meta=meta)


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _wavelength_in(lines) -> float | None:
    for line in lines:
        m = _WAVELENGTH_RE.search(line)
        if m:
            v = float(m.group(1))
            if 0.01 < v < 20.0:
                return v
    return None


def _is_float(tok: str) -> bool:
    try:
        float(tok)
        return True
    except ValueError:
        return False


_SPLIT = re.compile(r"[,\s]+")


def _row_tokens(line: str):
    """Numeric tokens of a data line, or None if the line is blank/comment; raises nothing."""
    s = line.strip()
    if not s or s[0] in "#!":
        return None
    for c in "#!":
        k = s.find(c)
        if k > 0:
            s = s[:k]
    s = s.strip().strip(",").strip()
    return [t for t in _SPLIT.split(s) if t] or None


def _sniff_table(text: str) -> str | None:
    for line in text.splitlines():
        toks = _row_tokens(line)
        if toks and all(_is_float(t) for t in toks):
            return "csv" if "," in line else "xy"
    return None


def _sniff(data: bytes, path: Path) -> str | None:
    if data[:4] in (b"RAW1", b"RAW ", b"RAW2", b"RAW4"):
        return "bruker_raw"
    head = data[:4096]
    head_txt = head.decode("latin-1")
    if "<?xml" in head_txt[:300] or "www.xrdml.com" in head_txt or "<xrdMeasurements" in head_txt:
        return "xrdml"
    if b"\x00" in head:
        return None  # binary, not one we know
    text = _decode(data)
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("BANK"):
            return "gsas"
        if i == 0 or line.startswith("#") or (i == 1 and line[:4].lower() == "inst"):
            continue
        break
    return _sniff_table(text)


def _read_table(path, text: str, fmt: str) -> Pattern:
    header, comments = [], []
    rows, where = [], []
    ncol = None
    for lineno, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if s[:1] in ("#", "!"):
            comments.append(s)
            continue
        toks = _row_tokens(line)
        if toks is None:
            continue
        try:
            vals = [float(t) for t in toks]
        except ValueError:
            if not rows:
                header.append(s)
                continue
            _fail(path, f"non-numeric data at line {lineno}: {s[:60]!r}")
        if ncol is None:
            ncol = len(vals)
            if ncol not in (2, 3):
                _fail(path, f"line {lineno} has {ncol} column(s); expected 2 (2θ, intensity) or 3 (2θ, intensity, sigma)")
        elif len(vals) != ncol:
            _fail(path, f"line {lineno} has {len(vals)} column(s) but earlier rows have {ncol}")
        rows.append(vals)
        where.append(f"line {lineno}")
    if not rows:
        _fail(path, "no numeric data")
    a = np.asarray(rows, dtype=np.float64)
    meta = {}
    if header:
        meta["header"] = header
    if comments:
        meta["comments"] = comments
    sigma = a[:, 2] if ncol == 3 else None
    return _finish(path, a[:, 0], a[:, 1], sigma, fmt=fmt, sigma_source="file" if ncol == 3 else SIGMA_RULE,
                   wavelength=_wavelength_in(comments + header), meta=meta, where=where)


# --- GSAS ---------------------------------------------------------------------------------------


def _sfloat(path, s: str, what: str) -> float:
    s = s.strip()
    if not s:
        return 0.0
    try:
        return float(s)
    except ValueError:
        _fail(path, f"bad {what} field {s!r}")


def _read_gsas(path, text: str) -> Pattern:
    lines = text.splitlines()
    banks = [i for i, ln in enumerate(lines) if ln.startswith("BANK")]
    if not banks:
        _fail(path, "no GSAS BANK record")
    ib = banks[0]
    bank = lines[ib].strip()
    tok = bank.split()
    comments = [ln.rstrip() for ln in lines[:ib] if ln.startswith("#")]
    meta = {"title": lines[0].rstrip() if ib > 0 else "", "bank": bank, "n_banks": len(banks)}
    if comments:
        meta["comments"] = comments
    try:
        nchan = int(tok[2])
        bintyp = tok[4].upper()
    except (IndexError, ValueError):
        _fail(path, f"malformed BANK record {bank!r}")
    if bintyp not in ("CONST", "CONS"):
        _fail(path, f"BANK BINTYP {bintyp!r} not supported: only constant-wavelength (CONST/CONS) 2θ data")
    kind = tok[-1].upper() if tok[-1].upper() in ("STD", "ESD", "ALT", "FXYE", "FXY") else "STD"
    meta["gsas_type"] = kind
    try:
        start_cd, step_cd = float(tok[5]), float(tok[6])
    except (IndexError, ValueError):
        if kind in ("STD", "ESD"):
            _fail(path, f"BANK record lacks 2θ start/step: {bank!r}")
        start_cd = step_cd = float("nan")
    if nchan <= 0:
        _fail(path, f"BANK record gives {nchan} points")
    data = []
    for ln in lines[ib + 1:]:
        if ln.startswith("BANK") or ln.startswith("#") or ln.startswith("TIME_MAP") or "\x1a" in ln:
            break
        data.append(ln.rstrip("\r\n"))
    wl = _wavelength_in(comments)
    fmt = f"gsas-{kind.lower()}"

    if kind in ("FXYE", "FXY"):
        need = 3 if kind == "FXYE" else 2
        rows, where = [], []
        for k, ln in enumerate(data):
            t = ln.split()
            if not t:
                continue
            if len(t) < need:
                _fail(path, f"line {ib + 2 + k}: {kind} rows need {need} columns, got {len(t)}")
            try:
                rows.append([float(v) for v in t[:need]])
            except ValueError:
                _fail(path, f"non-numeric data at line {ib + 2 + k}: {ln.strip()[:60]!r}")
            where.append(f"line {ib + 2 + k}")
        if not rows:
            _fail(path, "no numeric data after BANK record")
        if len(rows) != nchan:
            _fail(path, f"BANK record says {nchan} points but {len(rows)} data rows follow")
        a = np.asarray(rows)
        return _finish(path, a[:, 0] / 100.0, a[:, 1], a[:, 2] if kind == "FXYE" else None, fmt=fmt,
                       sigma_source="file" if kind == "FXYE" else SIGMA_RULE, wavelength=wl, meta=meta, where=where)

    if kind == "ALT":
        xs, ys, es = [], [], []
        for ln in data:
            for i in range(0, min(len(ln), 80), 20):
                fx = ln[i:i + 8]
                xv = _sfloat(path, fx, "ALT 2θ")
                if not fx.strip() or xv == 0.0:
                    break
                xs.append(xv / 3200.0)
                ys.append(_sfloat(path, ln[i + 8:i + 15], "ALT intensity") / 1000.0)
                es.append(_sfloat(path, ln[i + 15:i + 20], "ALT esd") / 1000.0)
                if len(xs) == nchan:
                    break
            if len(xs) == nchan:
                break
        if len(xs) < nchan:
            _fail(path, f"BANK record says {nchan} points but only {len(xs)} ALT values found")
        return _finish(path, xs, ys, es, fmt=fmt, sigma_source="file", wavelength=wl, meta=meta)

    width = 8 if kind == "STD" else 16
    ys, es, nobs = [], [], []
    for ln in data:
        for i in range(0, min(len(ln), 80), width):
            f = ln[i:i + width]
            if not f.strip():
                break
            if kind == "STD":
                n = int(_sfloat(path, f[:2], "STD observation-count"))
                n = max(n, 1)
                yi = _sfloat(path, f[2:8], "STD intensity")
                ys.append(yi)
                nobs.append(n)
                es.append(math.sqrt(max(yi, 1.0) / n))
            else:
                ys.append(_sfloat(path, f[:8], "ESD intensity"))
                es.append(_sfloat(path, f[8:16], "ESD esd"))
            if len(ys) == nchan:
                break
        if len(ys) == nchan:
            break
    if len(ys) < nchan:
        _fail(path, f"BANK record says {nchan} points but only {len(ys)} {kind} values found")
    # integer centidegree arithmetic first, one division: exact 15.0, 130.04 ...
    x = (start_cd + step_cd * np.arange(nchan, dtype=np.float64)) / 100.0
    meta["start"], meta["step"] = start_cd / 100.0, step_cd / 100.0
    if kind == "STD":
        meta["n_obs_max"] = int(max(nobs))
    return _finish(path, x, ys, es, fmt=fmt, sigma_source=STD_SIGMA_RULE if kind == "STD" else "file",
                   wavelength=wl, meta=meta)


# --- Bruker RAW1.01 -----------------------------------------------------------------------------


def _read_bruker_raw(path, data: bytes) -> Pattern:
    magic = data[:7]
    if magic != b"RAW1.01":
        ver = {b"RAW ": "1", b"RAW2": "2", b"RAW4": "4"}.get(data[:4], "unknown")
        _fail(path, f"Bruker RAW version {ver} (magic {data[:7]!r}) not supported; only RAW1.01")
    if len(data) < 712 + 304:
        _fail(path, f"truncated Bruker RAW1.01 file ({len(data)} bytes, header alone is 1016)")

    def i32(o):
        return struct.unpack_from("<i", data, o)[0]

    def f64(o):
        return struct.unpack_from("<d", data, o)[0]

    def cstr(o, n):
        return data[o:o + n].split(b"\x00", 1)[0].decode("latin-1").strip()

    n_ranges = i32(12)
    if n_ranges < 1:
        _fail(path, f"Bruker RAW1.01 header says {n_ranges} ranges")
    meta = {"n_ranges": n_ranges, "date": cstr(16, 10), "time": cstr(26, 10), "user": cstr(36, 72),
            "sample": cstr(326, 60), "comment": cstr(386, 160), "anode": cstr(608, 4),
            "kalpha_mean": f64(616), "kalpha1": f64(624), "kalpha2": f64(632), "kbeta": f64(640),
            "kalpha2_ratio": f64(648), "goniometer_radius": struct.unpack_from("<f", data, 564)[0]}
    pos = 712
    hlen, steps = i32(pos), i32(pos + 4)
    if hlen != 304:
        _fail(path, f"Bruker RAW1.01 range header length {hlen}, expected 304")
    if steps <= 0:
        _fail(path, f"Bruker RAW1.01 range has {steps} steps")
    start, step = f64(pos + 16), f64(pos + 176)
    meta.update(start=start, step=step, used_lambda=f64(pos + 240),
                time_per_step=struct.unpack_from("<f", data, pos + 192)[0])
    supp = i32(pos + 256)
    off = pos + hlen + max(supp, 0)
    if off + 4 * steps > len(data):
        _fail(path, f"truncated Bruker RAW1.01 data: {steps} steps need {off + 4 * steps} bytes, file has {len(data)}")
    y = np.frombuffer(data, dtype="<f4", count=steps, offset=off).astype(np.float64)
    x = start + step * np.arange(steps, dtype=np.float64)
    wl = meta["kalpha1"] if 0.01 < meta["kalpha1"] < 20 else (meta["used_lambda"] if 0.01 < meta["used_lambda"] < 20 else None)
    return _finish(path, x, y, None, fmt="bruker_raw", sigma_source=SIGMA_RULE, wavelength=wl, meta=meta)


# --- PANalytical XRDML --------------------------------------------------------------------------


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _child(el, name):
    for c in el:
        if _local(c.tag) == name:
            return c
    return None


def _children(el, name):
    return [c for c in el if _local(c.tag) == name]


def _numbers(path, el, what) -> np.ndarray:
    try:
        return np.array([float(t) for t in (el.text or "").split()], dtype=np.float64)
    except ValueError:
        _fail(path, f"non-numeric value in <{what}>")


def _read_xrdml(path, data: bytes) -> Pattern:
    try:
        root = ET.fromstring(data)
    except ET.ParseError as e:
        _fail(path, f"not valid XML ({e})")
    if _local(root.tag) != "xrdMeasurements":
        _fail(path, f"XML root is <{_local(root.tag)}>, not <xrdMeasurements> (not an XRDML file)")
    measurements = _children(root, "xrdMeasurement")
    scans = [(m, s) for m in measurements for s in _children(m, "scan")]
    if not scans:
        _fail(path, "XRDML file has no xrdMeasurement/scan")
    meas, scan = scans[0]
    meta = {"n_scans": len(scans), "scan_axis": scan.get("scanAxis", ""), "status": scan.get("status", "")}
    sample = _child(root, "sample")
    if sample is not None and _child(sample, "id") is not None:
        meta["sample"] = (_child(sample, "id").text or "").strip()
    wl = None
    used = _child(meas, "usedWavelength")
    if used is not None:
        for key, name in (("kalpha1", "kAlpha1"), ("kalpha2", "kAlpha2"), ("kbeta", "kBeta"),
                          ("kalpha2_ratio", "ratioKAlpha2KAlpha1")):
            el = _child(used, name)
            if el is not None and (el.text or "").strip():
                try:
                    meta[key] = float(el.text)
                except ValueError:
                    _fail(path, f"non-numeric <{name}> {el.text!r}")
        wl = meta.get("kalpha1")
    points = _child(scan, "dataPoints")
    if points is None:
        _fail(path, "XRDML scan has no <dataPoints>")
    y_el = _child(points, "intensities")
    kind = "intensities"
    if y_el is None:
        y_el, kind = _child(points, "counts"), "counts"
    if y_el is None:
        _fail(path, "XRDML dataPoints has neither <intensities> nor <counts>")
    y = _numbers(path, y_el, kind)
    n = y.size
    if n == 0:
        _fail(path, f"no numeric data in <{kind}>")
    meta["intensity_element"] = kind
    att = np.ones(n)
    a_el = _child(points, "beamAttenuationFactors")
    if a_el is not None:
        att = _numbers(path, a_el, "beamAttenuationFactors")
        if att.size != n:
            _fail(path, f"{att.size} beamAttenuationFactors for {n} points")
        meta["attenuation_applied"] = kind == "counts"
    raw = y / att if kind == "intensities" else y  # raw detector counts
    y = y if kind == "intensities" else y * att
    sigma = att * np.sqrt(np.maximum(raw, 1.0))
    ct = _child(points, "commonCountingTime")
    if ct is not None and (ct.text or "").strip():
        meta["counting_time"] = float(ct.text)
    pos = [p for p in _children(points, "positions") if p.get("axis", "").lower() == "2theta"]
    if not pos:
        _fail(path, "XRDML dataPoints has no <positions axis=\"2Theta\">")
    p = pos[0]
    unit = p.get("unit", "deg")
    if unit.lower() not in ("deg", "degree", "degrees", "°"):
        _fail(path, f"2Theta positions in unit {unit!r}; only degrees supported")
    lst, s_el, e_el = _child(p, "listPositions"), _child(p, "startPosition"), _child(p, "endPosition")
    if lst is not None:
        x = _numbers(path, lst, "listPositions")
        if x.size != n:
            _fail(path, f"{x.size} listPositions for {n} intensities")
    elif s_el is not None and e_el is not None:
        x0, x1 = _numbers(path, s_el, "startPosition"), _numbers(path, e_el, "endPosition")
        if x0.size != 1 or x1.size != 1:
            _fail(path, "bad 2Theta start/endPosition")
        x = np.linspace(x0[0], x1[0], n)
    else:
        _fail(path, "2Theta is not scanned in this XRDML scan (no start/end or list positions)")
    return _finish(path, x, y, sigma, fmt="xrdml", sigma_source="f*sqrt(max(counts, 1))",
                   wavelength=wl, meta=meta)


# --- entry points -------------------------------------------------------------------------------


def _resolve_fmt(path, fmt) -> str:
    key = str(fmt).lower().lstrip(".")
    if key not in _FMT_ALIASES:
        _fail(path, f"unknown format {fmt!r} (known: {', '.join(FORMATS)})")
    return _FMT_ALIASES[key]


def read_pattern(path, fmt: str | None = None) -> Pattern:
    """Read a measured powder pattern; see the module docstring for formats and sigma rules.

    ``fmt`` forces a reader (``xy``, ``csv``, ``gsas``, ``bruker_raw``, ``xrdml`` or an alias);
    otherwise the content decides, then the extension.  Raises ``ValueError("<path>: <problem>")``.
    """
    p = Path(path)
    if not p.exists():
        _fail(p, "file not found")
    if not p.is_file():
        _fail(p, "not a regular file")
    data = p.read_bytes()
    if not data.strip():
        _fail(p, "empty file")
    if fmt is not None:
        kind = _resolve_fmt(p, fmt)
    else:
        kind = _sniff(data, p) or _EXT_FORMAT.get(p.suffix.lower())
        if kind is None:
            _fail(p, "unknown format (not Bruker RAW1.01, XRDML or GSAS, and no numeric table found); "
                     "pass fmt= to force a reader")
    if kind == "bruker_raw":
        return _read_bruker_raw(p, data)
    if kind == "xrdml":
        return _read_xrdml(p, data)
    if b"\x00" in data[:4096]:
        _fail(p, f"binary content, cannot be read as {kind}")
    text = _decode(data)
    if kind == "gsas":
        return _read_gsas(p, text)
    return _read_table(p, text, kind)


def _r(v: float) -> str:
    return repr(v)  # shortest string that reads back to the same float


def write_pattern(pattern_or_arrays, path, fmt: str | None = None, *, include_sigma: bool | None = None) -> Path:
    """Write a Pattern, or ``(two_theta, intensity[, sigma])`` arrays, as ``xy`` or ``csv``.

    * ``xy``: ``#`` comment lines (source, ``wavelength = ...`` if known, column names), then
      space-separated rows ``2θ y [sigma]``.
    * ``csv``: a header row ``two_theta,intensity[,sigma]`` then comma-separated rows (no wavelength).

    ``fmt`` defaults from the extension (``.csv`` → csv; ``.xy .xye .dat .txt`` → xy).  Sigma is
    written for a Pattern and for 3-array input unless ``include_sigma=False``.  Floats are written
    with ``repr`` so that reading back gives the identical values.  Returns the path.
    """
    p = Path(path)
    if isinstance(pattern_or_arrays, Pattern):
        pat = pattern_or_arrays
        has_sigma = True
    else:
        arrs = list(pattern_or_arrays)
        if len(arrs) not in (2, 3):
            _fail(p, f"write_pattern wants a Pattern or (two_theta, intensity[, sigma]), got {len(arrs)} arrays")
        pat = Pattern(*arrs, source=str(p))
        has_sigma = len(arrs) == 3
    if include_sigma is not None:
        has_sigma = bool(include_sigma)
    if fmt is None:
        kind = _EXT_FORMAT.get(p.suffix.lower())
        if kind not in ("xy", "csv"):
            _fail(p, f"cannot tell the output format from extension {p.suffix!r}; pass fmt='xy' or fmt='csv'")
    else:
        kind = _resolve_fmt(p, fmt)
        if kind not in ("xy", "csv"):
            _fail(p, f"writing format {kind!r} is not supported (only xy and csv)")
    cols = [pat.two_theta.tolist(), pat.intensity.tolist()] + ([pat.sigma.tolist()] if has_sigma else [])
    names = ["two_theta", "intensity"] + (["sigma"] if has_sigma else [])
    out = []
    if kind == "csv":
        out.append(",".join(names))
        sep = ","
    else:
        out.append("# written by xtaljax.io.patterns" + (f" from {pat.source}" if pat.source else ""))
        if pat.wavelength is not None:
            out.append(f"# wavelength = {pat.wavelength!r}")
        out.append("# " + " ".join(names))
        sep = " "
    out.extend(sep.join(_r(v) for v in row) for row in zip(*cols))
    p.write_text("\n".join(out) + "\n", encoding="utf-8", newline="\n")
    return p
