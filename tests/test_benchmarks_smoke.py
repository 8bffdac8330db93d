"""Smoke test of ``benchmarks/simulate.py --size tiny``: it runs, writes the JSON it promises,
and every timing/throughput in it is a positive number."""

import json
import math
import subprocess
import sys
import time

import pytest
from pathlib import Path

from conftest import shared_path

REPO = Path(__file__).resolve().parents[1]


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def test_simulate_benchmark_tiny(tmp_path):
    csv_path = shared_path("structures", "mp_20_subset", "mp_20_subset.csv")
    out = tmp_path / "simulate_tiny.json"
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "simulate.py"), "--size", "tiny",
                           "--repeats", "2", "--data", str(csv_path), "--out", str(out)],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    elapsed = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    # ~20 s alone, ~45 s beside another busy worker on 2 cores (pytest -n 2)
    assert elapsed < 90, f"tiny benchmark took {elapsed:.1f} s"

    r = json.loads(out.read_text())
    for key in ("device", "versions", "workload", "results", "peers", "targets", "models", "env"):
        assert key in r, key
    assert r["size"] == "tiny" and r["dtype"] == "float32"
    assert r["device"]["platform"] and r["device"]["device_kind"]
    assert _positive(r["device"]["cpus_available"])
    assert r["versions"]["jax"] and r["versions"]["jaxlib"]
    w = r["workload"]
    assert w["n_structures"] == 8
    assert w["config"]["window"] > 0 and w["lines"] == 2
    assert w["two_theta"]["points"] > 100

    for mode in ("bucketed", "unbucketed"):
        m = r["results"][mode]
        for k in ("prepare_s", "compile_forward_s", "compile_value_and_grad_s"):
            assert _positive(m[k]), (mode, k, m[k])
        assert _positive(m["forward"]["patterns_per_s"]) and _positive(m["forward"]["median_s"])
        assert all(_positive(t) for t in m["forward"]["seconds_per_pass"])
        assert _positive(m["value_and_grad"]["per_s"]) and _positive(m["value_and_grad"]["ratio_to_forward"])
        for k in ("pv_evaluations_per_pattern", "flops_per_pattern", "bytes_per_pattern", "achieved_gflops"):
            assert _positive(m["roofline"][k]), (mode, k)
        assert m["groups"] and all(g["capacity"] > 0 and g["site_padding"] > 0 and g["batch"] > 0
                                   for g in m["groups"])
        assert sum(g["structures"] for g in m["groups"]) == 8
    # bucketing only changes shapes, never values
    assert r["results"]["bucketed_vs_unbucketed_max_rel_diff"] < 1e-4
    assert r["results"]["bucketed"]["overflow_flags"] == 0

    for peer in ("pymatgen_sticks", "xtaljax_sticks"):
        assert _positive(r["peers"][peer]["per_s"]), peer
    assert "braggcalculator" in r["peers"]
    assert _positive(r["targets"]["patterns_per_s"])


def test_refine_batch_benchmark_tiny(tmp_path):
    """``benchmarks/refine_batch.py --size tiny``: 4 simulated FAP patterns refined in one
    vmapped call recover a and c; the JSON has its fields."""
    out = tmp_path / "rb.json"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "refine_batch.py"), "--size", "tiny",
                           "--out", str(out)], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    r = json.loads(out.read_text())
    res = r["results"]
    assert r["workload"]["n_patterns"] == 4
    for k in ("batch_seconds_steady", "batch_patterns_per_s", "sequential_seconds_per_pattern_steady"):
        assert _positive(res[k]), k
    assert res["recovered_fraction_a_c_within_1e-3_A"] == 1.0
    assert res["gof_max"] < 1.3


def test_wpem_series_benchmark_tiny(tmp_path):
    """``benchmarks/wpem_series.py --size tiny``: a drifting two-phase series decomposed in one
    batched call tracks the lattice."""
    out = tmp_path / "ws.json"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "wpem_series.py"), "--size", "tiny",
                           "--out", str(out)], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    res = json.loads(out.read_text())["results"]
    for k in ("batch_seconds_steady", "batch_patterns_per_s", "loop_seconds_per_pattern_steady_median"):
        assert _positive(res[k]), k
    assert res["a_abs_error_max_A"] < 5e-4  # tracked from chunk to chunk (0.3 % drift in all)


def test_xtaljax_bench_runs_a_suite_and_rejects_unknown_ones(tmp_path):
    """``xtaljax bench``: one suite end to end (its own JSON inside the combined one, a headline
    row), an unknown suite a one-line error with exit 2."""
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "xtaljax.cli", "bench", "--suite", "sharding", "--size", "tiny",
                           "--out", str(out)], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    entry = json.loads(out.read_text())["suites"]["sharding"]
    assert entry["result"]["benchmark"] == "sharding_scaling" and _positive(entry["headline"]["8 dev s"])
    assert "sharding" in proc.stdout
    bad = subprocess.run([sys.executable, "-m", "xtaljax.cli", "bench", "--suite", "nope"], capture_output=True,
                         text=True, timeout=120, cwd=REPO)
    assert bad.returncode == 2 and "unknown suite" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


@pytest.mark.skipif(not (REPO.parent / "shared" / "data" / "structures" / "perov_5" / "test.csv").is_file(),
                    reason="../shared data not present")
def test_generator_eval_benchmark_tiny(tmp_path):
    """``benchmarks/generator_eval.py --size tiny`` with the shipped perov-5 generator: every
    section of the protocol runs and reports rates in [0, 1] and positive times."""
    out = tmp_path / "gen.json"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "generator_eval.py"), "--size", "tiny",
                           "--out", str(out)], capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    r = json.loads(out.read_text())
    res = r["results"]
    assert r["n_rows"] == 8 and r["k"] == 2
    for name in ("no_lattice", "with_lattice", "subset_no_lattice_guided", "subset_with_lattice_plain"):
        assert set(res[name]["match_rate"]) == {"1", "2"}
        assert all(0.0 <= v <= 1.0 for v in res[name]["match_rate"].values())
        assert res[name]["match_rate"]["1"] <= res[name]["match_rate"]["2"]
        assert _positive(res[name]["seconds_per_sample"])
    assert 0.0 <= res["refinement_no_lattice_best_ranked"]["match_rate_after"] <= 1.0
    assert 0.0 <= res["retrieval_current_encoder"]["top1"] <= res["retrieval_current_encoder"]["top10"] <= 1.0


@pytest.mark.skipif(not (REPO.parent / "shared" / "data" / "structures" / "perov_5" / "test.csv").is_file(),
                    reason="../shared data not present")
def test_generator_failures_benchmark_tiny(tmp_path):
    """``benchmarks/generator_failures.py`` on 4 rows × 2 samples in chunks of 2: every row gets
    one class, the counts add up, the truth's own loss is ~0 (the noiseless pattern it was made
    from), and a rerun resumes from the finished chunks with the same rows."""
    out = tmp_path / "fail.json"
    cmd = [sys.executable, str(REPO / "benchmarks" / "generator_failures.py"), "--rows", "4", "--samples", "2",
           "--chunk", "2", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    r = json.loads(out.read_text())
    s = r["summary"]
    assert s["rows"] == 4 and sum(s["classes"].values()) == 4
    assert {row["class"] for row in r["rows"]} <= {"top1_match", "decoration", "geometry"}
    assert s["failures_with_a_match_among_k"] <= 4 - s["classes"]["top1_match"]
    assert s["median_truth_loss"] < 0.05
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert again.returncode == 0 and "resuming: 2 chunk(s), 4 rows done" in again.stderr, again.stderr[-2000:]
    assert json.loads(out.read_text())["rows"] == r["rows"]
