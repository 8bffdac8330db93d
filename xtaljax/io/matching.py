"""Many structures against one reference with pymatgen's ``StructureMatcher``, fast and exact.

``StructureMatcher.fit`` and ``get_rms_dist`` reduce both structures (Niggli, then primitive
cell) on every call through a class-wide ``lru_cache`` keyed by the structure. A ``Structure``
hashes by its composition, so every candidate of one formula collides in that cache and each
lookup compares it site by site with the cached ones: matching 600 candidates of one formula
spent a third of its time in ``Structure.__eq__``, and the reference and every matched
candidate were reduced again for the RMS. :class:`ReferenceMatcher` reduces the reference once
and each candidate once (the same two calls pymatgen makes) and runs pymatgen's own fit and RMS
on the reduced pair (``skip_structure_reduction``), so the answers are pymatgen's
(``tests/test_matching.py`` compares them).
"""

from __future__ import annotations

import warnings


class ReferenceMatcher:
    """``StructureMatcher(**kwargs)`` (or the given ``matcher``) against a fixed ``reference``
    (pymatgen ``Structure``).

    ``match(s)`` returns ``(fit, rms)``: ``StructureMatcher.fit(s, reference)`` and, when it fits
    and ``rms`` is asked for, the normalised RMS displacement of ``get_rms_dist(s, reference)``
    (``None`` otherwise). ``rms_dist(s)`` is ``get_rms_dist(s, reference)`` alone. Warnings of
    the matcher are silenced."""

    def __init__(self, reference, matcher=None, **kwargs):
        from pymatgen.analysis.structure_matcher import StructureMatcher

        if matcher is not None and kwargs:
            raise ValueError("give either a StructureMatcher or its keyword arguments, not both")
        self.matcher = matcher if matcher is not None else StructureMatcher(**kwargs)
        # the shortcut relies on two private steps of StructureMatcher; without them (another
        # pymatgen), or with ignored species (removed before the reduction), use the public calls
        sm = self.matcher
        self._fast = not getattr(sm, "_ignored_species", None) and all(
            hasattr(sm, a) for a in ("_process_species", "_preprocess", "_match", "_primitive_cell"))
        self.reference = reference
        self._ref = self._reduce(reference) if self._fast else reference

    def _reduce(self, s):
        """What ``StructureMatcher._get_reduced_structure`` returns: Niggli cell, then primitive."""
        from pymatgen.core import Structure

        r = s.get_reduced_structure(reduction_algo="niggli")
        if self.matcher._primitive_cell:
            r = r.get_primitive_structure()
        return Structure.from_sites(r)

    def match(self, structure, rms: bool = True):
        sm = self.matcher
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if not self._fast:
                ok = bool(sm.fit(structure, self.reference))
                r = sm.get_rms_dist(structure, self.reference) if ok and rms else None
                return ok, (None if r is None else float(r[0]))
            red = self._reduce(structure)
            ok = bool(sm.fit(red, self._ref, skip_structure_reduction=True))
            if not ok or not rms:
                return ok, None
            r = self._rms_reduced(red)
            return ok, (None if r is None else r[0])

    def rms_dist(self, structure):
        """``StructureMatcher.get_rms_dist(structure, reference)``: ``(rms, max_dist)`` or ``None``."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if not self._fast:
                r = self.matcher.get_rms_dist(structure, self.reference)
                return None if r is None else (float(r[0]), float(r[1]))
            return self._rms_reduced(self._reduce(structure))

    def _rms_reduced(self, red):
        # get_rms_dist on the reduced pair (it has no skip_structure_reduction of its own)
        sm = self.matcher
        s1, s2 = sm._process_species([red, self._ref])
        s1, s2, fu, s1_supercell = sm._preprocess(s1, s2, skip_structure_reduction=True)
        m = sm._match(s1, s2, fu, s1_supercell, use_rms=True, break_on_match=False)
        return None if m is None else (float(m[0]), float(max(m[1])))
