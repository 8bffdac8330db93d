"""``xtaljax bench``: run the repository's benchmark scripts as suites and print one table.

Each suite is one script in ``benchmarks/`` (a checkout of the repository; the scripts are not
installed with the package). The scripts measure their peers in the same run and write their own
JSON (compile and steady state timed apart, device kind, JAX version, a roofline estimate where
the script has one); this command runs them one after the other in subprocesses (so each starts
with a fresh JAX runtime), collects their JSON into one file and prints the headline numbers.

========== ============================== ==============================================
suite      script                         headline
========== ============================== ==============================================
simulate   benchmarks/simulate.py         patterns/s, value_and_grad/s and ratio, pymatgen/s
refine     benchmarks/refine_batch.py     batch patterns/s vs sequential, |Δa|
em         benchmarks/wpem_series.py      series patterns/s vs loop, |Δa|
landscape  benchmarks/landscape_study.py  match rates, wall time
sharding   benchmarks/sharding_scaling.py devices vs time, identical results
pywpem     benchmarks/wpem_vs_pywpem.py   Mn2O3: PyWPEM vs xtaljax decompose, time and Rwp
========== ============================== ==============================================

``grad`` runs ``simulate`` too (value_and_grad is measured in the same run as the forward
pass; ``all`` runs it once, as ``simulate``). ``pywpem`` is the
EM suite's peer: PyWPEM (PyPI ``pyxplore``) in its own virtual environment
(``benchmarks/.venv-pywpem``, created on first use: ~2.7 GB, it pins an old numpy), run on the
Mn2O3 tutorial pattern for 3 / 10 / 50 EM iterations (tiny / small / full; 50 is PyWPEM's
tutorial setting), against ``xtaljax decompose`` run to convergence in the same run. The generator
suite waits for the generator (issue 7).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: suite -> (script, {requested size: script size, or the script's own arguments}, extra args)
SUITES = {
    "simulate": ("simulate.py", {"tiny": "tiny", "small": "small", "full": "full"}, ["--peers", "all"]),
    "grad": ("simulate.py", {"tiny": "tiny", "small": "small", "full": "full"}, ["--peers", "none"]),
    "refine": ("refine_batch.py", {"tiny": "tiny", "small": "small", "full": "full"}, []),
    "em": ("wpem_series.py", {"tiny": "tiny", "small": "small", "full": "full"}, []),
    "landscape": ("landscape_study.py", {"tiny": "tiny", "small": "tiny", "full": "full"}, []),
    "sharding": ("sharding_scaling.py", {"tiny": "tiny", "small": "small", "full": "small"}, []),
    "pywpem": ("wpem_vs_pywpem.py", {"tiny": ["--pywpem-iterations", "3"], "small": ["--pywpem-iterations", "10"],
                                     "full": ["--pywpem-iterations", "50"]}, []),
    "generate": ("generator_eval.py", {"tiny": "tiny", "small": "small", "full": "full"}, []),
}


class BenchError(ValueError):
    """Bad request for ``xtaljax bench`` (the message names the cause)."""


def benchmarks_dir() -> Path:
    d = Path(__file__).resolve().parents[1] / "benchmarks"
    if not (d / "simulate.py").exists():
        raise BenchError(f"no benchmark scripts at {d}: `xtaljax bench` runs from a checkout of the repository")
    return d


class CpuMeter:
    """How busy the whole machine was while a benchmark ran: a wall time on a shared 2-core VM
    means little without it (the same landscape study took 509 s with another job running and
    266 s on an idle machine). ``stop()`` returns, in CPU seconds since construction,
    ``own_cpu_s`` (this process and its waited-for children), ``machine_busy_cpu_s`` (all
    cores, from ``/proc/stat``), ``other_cpu_s`` (their difference: other processes),
    ``steal_s`` (time the hypervisor gave to other guests) and ``wall_s``; on a system without
    ``/proc/stat`` only the first and the last."""

    def __init__(self):
        self._t0, self._own0, self._proc0 = time.perf_counter(), self._own(), self._proc()

    @staticmethod
    def _own() -> float:
        import os

        t = os.times()
        return t.user + t.system + t.children_user + t.children_system

    @staticmethod
    def _proc():
        import os

        try:
            with open("/proc/stat") as fh:
                f = [int(v) for v in fh.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        tick = os.sysconf("SC_CLK_TCK")
        # user nice system idle iowait irq softirq steal [guest guest_nice: already in user/nice]
        busy = sum(f[i] for i in (0, 1, 2, 5, 6) if i < len(f))
        steal = f[7] if len(f) > 7 else 0
        return busy / tick, steal / tick

    def stop(self) -> dict:
        out = {"wall_s": time.perf_counter() - self._t0, "own_cpu_s": self._own() - self._own0}
        p1 = self._proc()
        if self._proc0 is not None and p1 is not None:
            out["machine_busy_cpu_s"] = p1[0] - self._proc0[0]
            out["other_cpu_s"] = max(0.0, out["machine_busy_cpu_s"] - out["own_cpu_s"])
            out["steal_s"] = p1[1] - self._proc0[1]
        return {k: round(v, 2) for k, v in out.items()}


def _get(d: dict, path):
    """``d[k1][k2]...`` for ``path`` "k1.k2..." (or a list of keys, for keys that hold dots)."""
    for k in (path.split(".") if isinstance(path, str) else path):
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def headline(suite: str, res: dict) -> list[tuple[str, object]]:
    """The numbers worth a table row, by suite (missing keys are shown as None)."""
    if suite == "simulate":
        return [("patterns/s", _get(res, "results.bucketed.forward.patterns_per_s")),
                ("value_and_grad/s", _get(res, "results.bucketed.value_and_grad.per_s")),
                ("grad/forward", _get(res, "results.bucketed.value_and_grad.ratio_to_forward")),
                ("pymatgen sticks/s", _get(res, "peers.pymatgen_sticks.per_s")),
                ("compile s", _get(res, "results.bucketed.compile_forward_s")),
                ("GFLOP/s", _get(res, "results.bucketed.roofline.achieved_gflops"))]
    if suite == "grad":
        return [("value_and_grad/s", _get(res, "results.bucketed.value_and_grad.per_s")),
                ("grad/forward", _get(res, "results.bucketed.value_and_grad.ratio_to_forward")),
                ("patterns/s", _get(res, "results.bucketed.forward.patterns_per_s")),
                ("compile value_and_grad s", _get(res, "results.bucketed.compile_value_and_grad_s"))]
    if suite == "refine":
        return [("batch patterns/s", _get(res, "results.batch_patterns_per_s")),
                ("sequential s/pattern", _get(res, "results.sequential_seconds_per_pattern_steady")),
                ("batch/sequential", _get(res, "results.speedup_batch_vs_sequential")),
                ("|Δa| median Å", _get(res, "results.abs_da_median_A"))]
    if suite == "em":
        return [("batch patterns/s", _get(res, "results.batch_patterns_per_s")),
                ("loop s/pattern", _get(res, "results.loop_seconds_per_pattern_steady_median")),
                ("batch/loop", _get(res, "results.speedup_batch_vs_loop")),
                ("|Δa| max Å", _get(res, "results.a_abs_error_max_A"))]
    if suite == "landscape":
        return [(f"match {m} {p}", _get(res, f"match_rate.{m}.{p}")) for m in ("cosine",)
                for p in ("free", "family", "wyckoff")] + [("wall s", _get(res, "timings.wall_s")
                                                           or _get(res, "wall_seconds"))]
    if suite == "pywpem":
        sc = ["results", "scores_same_definitions"]
        sub = "pywpem_2026.10_subset_Rwp"
        return [("PyWPEM s", _get(res, "results.pywpem.wall_seconds_total")),
                ("xtaljax cold s", _get(res, "results.xtaljax.wall_seconds_cold")),
                ("xtaljax warm s", _get(res, "results.xtaljax.wall_seconds_warm")),
                ("speed-up cold", _get(res, "results.speed_ratio.pywpem_total_over_xtaljax_cold")),
                ("PyWPEM Rwp subset", _get(res, sc + ["pywpem_final", "own_background", sub])),
                ("PyWPEM Rwp subset before bkg update", _get(res, sc + ["pywpem_pre_update", "own_background", sub])),
                ("xtaljax Rwp subset", _get(res, sc + ["xtaljax", "own_background", sub])),
                ("PyWPEM a", _get(res, "results.pywpem.a")), ("xtaljax a", _get(res, "results.xtaljax.a"))]
    if suite == "generate":
        r = "results"
        return [("match@1", _get(res, f"{r}.no_lattice.match_rate.1")),
                (f"match@{res.get('k')}", _get(res, [r, "no_lattice", "match_rate", str(res.get("k"))])),
                ("match@1 polished+ranked", _get(res, f"{r}.no_lattice_polished_ranked.match_rate.1")),
                ("match@1 lattice given", _get(res, f"{r}.with_lattice.match_rate.1")),
                ("RMSE@1", _get(res, f"{r}.no_lattice.rmse.1")),
                ("s/sample", _get(res, f"{r}.no_lattice.seconds_per_sample")),
                ("match@1 refined (subset)", _get(res, f"{r}.refinement_no_lattice_best_ranked.match_rate_after"))]
    if suite == "sharding":
        runs = res.get("runs") or []
        return [(f"{r.get('n_devices')} dev s", _get(r, "sharded.median_s")) for r in runs] + [
            ("max diff / row max", max((r.get("max_diff_rel_to_row_max") or 0.0) for r in runs) if runs else None)]
    return []


def run(suites: list[str], size: str, out: str | None, *, python: str = sys.executable,
        timeout: float = 7200.0) -> dict:
    bad = [s for s in suites if s not in SUITES]
    if bad:
        raise BenchError(f"unknown suite(s) {bad}; choose from {sorted(SUITES)} or 'all'")
    bdir = benchmarks_dir()
    report = {"benchmark": "xtaljax bench", "size": size, "suites": {}}
    with tempfile.TemporaryDirectory(prefix="xtaljax-bench-") as tmp:
        for suite in suites:
            script, sizes, extra = SUITES[suite]
            path = Path(tmp) / f"{suite}.json"
            own = sizes[size]
            size_args = list(own) if isinstance(own, list) else ["--size", own]
            cmd = [python, str(bdir / script), *size_args, "--out", str(path), *extra]
            print(f"[bench] {suite}: {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
            t0 = time.perf_counter()
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=bdir.parent)
                rc, err = proc.returncode, proc.stderr.strip().splitlines()[-1:] if proc.returncode else []
            except subprocess.TimeoutExpired:
                rc, err = 124, [f"timed out after {timeout:g} s"]
            entry = {"script": script, "size": size if isinstance(own, list) else own, "returncode": rc, "wall_seconds": time.perf_counter() - t0}
            if rc == 0 and path.exists():
                entry["result"] = json.loads(path.read_text())
                entry["headline"] = dict(headline(suite, entry["result"]))
            else:
                entry["error"] = (err or ["no JSON written"])[0]
            report["suites"][suite] = entry
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(report, indent=1))
    return report


def format_table(report: dict) -> str:
    lines = [f"{'suite':<10} {'size':<6} {'wall s':>8}  headline"]
    for suite, e in report["suites"].items():
        if "headline" in e:
            parts = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in e["headline"].items())
        else:
            parts = f"FAILED (rc {e['returncode']}): {e.get('error', '')}"
        lines.append(f"{suite:<10} {e['size']:<6} {e['wall_seconds']:>8.1f}  {parts}")
    return "\n".join(lines)
