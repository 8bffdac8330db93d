"""Structure generator: data pipeline, network symmetries, flow matching, resumable training,
sampling, checkpoints and bad input. Tiny models so the whole file compiles in CI time."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import xtaljax as xj
from xtaljax.io import from_pymatgen
from xtaljax.generate import checkpoint as ck
from xtaljax.generate.api import generate, parse_composition
from xtaljax.generate.data import (Augment, PatternGrid, PatternSource, lattice_to_vec, load_set, params_to_matrix,
                                   to_model_grid, vec_to_params)
from xtaljax.generate.flow import Guidance, flow_loss, masked_center, wrap
from xtaljax.generate.models import Generator, ModelConfig
from xtaljax.generate.train import TrainConfig, batch_indices, train

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "structures"
PEROV = SHARED / "perov_5" / "val.csv"
MP20 = SHARED / "mp_20_subset" / "mp_20_subset.csv"
needs_data = pytest.mark.skipif(not PEROV.is_file(), reason="../shared data not present")

GRID = PatternGrid(n_points=256)
TINY = ModelConfig(n_points=256, embed_dim=16, hidden=16, layers=1, n_freq=2, cnn_channels=(4, 8), patch=16,
                   tf_dim=16, tf_layers=1, tf_heads=2)


@pytest.fixture(scope="module")
def perov():
    return load_set(PEROV, limit=12)


@needs_data
def test_load_set_shapes_and_niggli(perov):
    assert perov.z.shape == (12, 5) and perov.frac.shape == (12, 5, 3)
    assert np.all(perov.mask == 1) and np.all((perov.frac >= 0) & (perov.frac < 1))
    for s, p in zip(perov.structures, perov.params):
        np.testing.assert_allclose(s.lattice.parameters, p)
        assert np.isclose(s.lattice.volume, abs(np.linalg.det(params_to_matrix(jnp.asarray(p)))), rtol=1e-5)
    sub = load_set(MP20, split="test", limit=5)
    assert sub.max_atoms <= 20 and len(sub) == 5
    with pytest.raises(ValueError, match="split"):
        load_set(PEROV, split="test")
    with pytest.raises(ValueError, match="more than max_atoms"):
        load_set(MP20, limit=40, max_atoms=2)


def test_lattice_vector_roundtrip():
    p = np.array([[3.9, 4.1, 5.2, 80.0, 95.0, 110.0]])
    np.testing.assert_allclose(vec_to_params(lattice_to_vec(p)), p, rtol=1e-12)
    from pymatgen.core import Lattice
    np.testing.assert_allclose(np.asarray(params_to_matrix(jnp.asarray(p, jnp.float32)))[0],
                               Lattice.from_parameters(*p[0]).matrix, atol=1e-4)


@needs_data
def test_rendered_pattern_equals_simulator(perov):
    """The training pipeline's noiseless pattern is the simulator's pattern of that structure."""
    src = PatternSource(perov, GRID, Augment.off())
    y = np.asarray(src.render(np.arange(3), jax.random.key(0)))
    assert y.shape == (3, 256) and np.allclose(y.max(1), 1.0)
    for i in range(3):
        c = from_pymatgen(perov.structures[i], b_iso=0.5)
        ins = GRID.instrument(u=4e-4, v=-4e-4, w=1e-3, x=0.01)
        ref = np.asarray(xj.simulate(c, ins, GRID.two_theta, config=src.config))
        np.testing.assert_allclose(y[i], ref / ref.max(), atol=2e-4)
    noisy = np.asarray(PatternSource(perov, GRID, Augment()).render(np.arange(3), jax.random.key(1)))
    assert np.all(np.isfinite(noisy)) and np.allclose(noisy.max(1), 1.0) and noisy.min() >= 0
    assert np.abs(noisy - y).max() > 0.01


@needs_data
def test_to_model_grid_converts_wavelength(perov):
    c = from_pymatgen(perov.structures[0], b_iso=0.5)
    cu = np.asarray(xj.simulate(c, GRID.instrument(), GRID.two_theta))
    tt_mo = np.linspace(3.0, 40.0, 3000)
    mo = np.asarray(xj.simulate(c, xj.Instrument.lab("Mo"), tt_mo))
    y = to_model_grid(tt_mo, mo, float(np.asarray(xj.Instrument.lab("Mo").wavelengths)[0]), GRID)
    cos = y @ cu / np.linalg.norm(y) / np.linalg.norm(cu)
    assert cos > 0.9
    with pytest.raises(ValueError, match="covers"):
        to_model_grid(tt_mo[:300], mo[:300], 0.7093, GRID)
    with pytest.raises(ValueError, match="NaN"):
        to_model_grid(tt_mo, np.where(tt_mo > 10, np.nan, mo), 0.7093, GRID)


def test_wrap_and_center():
    d = jnp.array([0.49, 0.51, -0.51, 1.2])
    np.testing.assert_allclose(wrap(d), [0.49, -0.49, 0.49, 0.2], atol=1e-6)
    v = jnp.ones((1, 3, 3)) * jnp.array([1.0, 2.0, 3.0])[None, :, None]
    out = masked_center(v, jnp.array([[1.0, 1.0, 0.0]]))
    np.testing.assert_allclose(out[0, :, 0], [-0.5, 0.5, 0.0])


def test_denoiser_symmetries():
    """Coordinate velocities: invariant to a rigid translation (mod 1), equivariant to a
    permutation of the atoms; padding rows output zero."""
    m = Generator(TINY, nnx.Rngs(0))
    b, n = 2, 4
    z = jnp.array([[8, 22, 38, 0], [8, 8, 12, 0]])
    mask = (z > 0).astype(jnp.float32)
    x = jax.random.uniform(jax.random.key(0), (b, n, 3))
    lat = jax.random.normal(jax.random.key(1), (b, 6))
    t, emb, given = jnp.array([0.3, 0.7]), jax.random.normal(jax.random.key(2), (b, 16)), jnp.zeros(b)
    v, vl = m.velocity(z, x, lat, mask, t, emb, given)
    v2, vl2 = m.velocity(z, jnp.mod(x + jnp.array([[[0.31, -0.2, 0.77]]]), 1.0), lat, mask, t, emb, given)
    np.testing.assert_allclose(v, v2, atol=1e-4)
    np.testing.assert_allclose(vl, vl2, atol=1e-4)
    perm = jnp.array([2, 0, 1, 3])
    v3, vl3 = m.velocity(z[:, perm], x[:, perm], lat, mask[:, perm], t, emb, given)
    np.testing.assert_allclose(v3, v[:, perm], atol=1e-4)
    np.testing.assert_allclose(vl3, vl, atol=1e-4)
    assert float(jnp.abs(v[:, 3]).max()) == 0.0


def test_flow_loss_zero_for_exact_field():
    """The loss is the squared error to the geodesic target: a field returning the target has
    zero coordinate loss (checked by substituting the target velocity)."""
    class Oracle:
        def velocity(self, z, xt, lt, mask, t, emb, given):
            return self.u, jnp.zeros_like(lt)

    b, n = 3, 4
    mask = jnp.ones((b, n))
    batch = {"z": jnp.ones((b, n), jnp.int32), "frac": jax.random.uniform(jax.random.key(3), (b, n, 3)),
             "lat": jnp.zeros((b, 6)), "mask": mask}
    key = jax.random.key(4)
    k1, k2, _, _ = jax.random.split(key, 4)
    x0 = jax.random.uniform(k2, (b, n, 3))
    o = Oracle()
    o.u = masked_center(wrap(batch["frac"] - x0), mask)
    loss, aux = flow_loss(o, batch, jnp.zeros((b, 4)), key, p_given=1.0)
    assert float(aux["coord"]) < 1e-10 and float(aux["lattice"]) == 0.0
    o.u = o.u + 0.1  # a rigid translation of the velocity field is no error (centred away)...
    assert float(flow_loss(o, batch, jnp.zeros((b, 4)), key, p_given=1.0)[1]["coord"]) < 1e-10
    o.u = o.u + 0.1 * jnp.arange(n, dtype=o.u.dtype)[None, :, None]  # ...a relative one is
    assert float(flow_loss(o, batch, jnp.zeros((b, 4)), key, p_given=1.0)[1]["coord"]) > 1e-3


def test_batch_order_is_a_function_of_seed_and_step():
    a = [batch_indices(3, s, 50, 8) for s in range(12)]
    b = [batch_indices(3, s, 50, 8) for s in range(12)]
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert len(set(np.concatenate(a[:6]).tolist())) == 48  # one epoch: no repeats


def _cfg(out_csv=PEROV, **kw):
    base = dict(train_csv=str(out_csv), limit=16, batch=8, pretrain_steps=3, flow_steps=4, save_every=2, eval_every=100,
                warmup=1)
    return TrainConfig(**(base | kw))


def test_transformer_encoder_trains():
    """The Transformer encoder: right shape, finite InfoNCE gradient that reaches every weight."""
    from xtaljax.generate.flow import info_nce
    m = Generator(dataclasses.replace(TINY, encoder="transformer"), nnx.Rngs(0))
    b = 4
    batch = {"z": jnp.full((b, 3), 8), "frac": jax.random.uniform(jax.random.key(0), (b, 3, 3)),
             "lat": jnp.zeros((b, 6)), "mask": jnp.ones((b, 3))}
    y = jax.random.uniform(jax.random.key(1), (b, 256))
    assert m.xrd(y).shape == (b, 16)
    g = nnx.grad(lambda mm: info_nce(mm, batch, y)[0])(m)
    leaves = jax.tree.leaves(nnx.state(g.xrd, nnx.Param))
    assert all(np.all(np.isfinite(np.asarray(x))) for x in leaves)
    assert all(float(jnp.abs(x).max()) > 0 for x in leaves)


@needs_data
def test_train_resume_is_exact(tmp_path):
    """An interrupted run (stopped after 3 of 7 steps, then resumed from its checkpoint) ends
    with exactly the parameters of an uninterrupted run."""
    mc = TINY
    full = train(_cfg(), tmp_path / "full", model_cfg=mc, grid=GRID, progress=False)
    assert full["step"] == 7 and np.isfinite(full["loss"])
    part = train(_cfg(), tmp_path / "part", model_cfg=mc, grid=GRID, progress=False, stop_after=3)
    assert part["step"] == 3
    train(_cfg(), tmp_path / "part", model_cfg=mc, grid=GRID, progress=False)
    m1, _ = ck.load_generator(tmp_path / "full")
    m2, _ = ck.load_generator(tmp_path / "part")
    p1, p2 = ck.flat_params(m1)[0], ck.flat_params(m2)[0]
    assert p1.keys() == p2.keys()
    for k in p1:
        np.testing.assert_array_equal(np.asarray(p1[k]), np.asarray(p2[k]), err_msg=k)
    with pytest.raises(ck.CheckpointError, match="different settings"):
        train(_cfg(batch=4), tmp_path / "part", model_cfg=mc, grid=GRID, progress=False)


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    if not PEROV.is_file():
        pytest.skip("../shared data not present")
    d = tmp_path_factory.mktemp("gen")
    train(_cfg(val_csv=str(PEROV), val_limit=8, eval_every=7), d / "run", model_cfg=TINY, grid=GRID, progress=False)
    ck.export(d / "run", d / "export")
    return d


@needs_data
def test_log_has_validation_and_retrieval(tiny_ckpt):
    rec = [json.loads(x) for x in (tiny_ckpt / "run" / "log.jsonl").read_text().splitlines()][-1]
    assert rec["step"] == 7 and np.isfinite(rec["val_flow"])
    assert 0.0 <= rec["val_retrieval"]["top1"] <= rec["val_retrieval"]["top10"] <= 1.0


@needs_data
@pytest.mark.parametrize("solver,lattice,guide", [("euler", False, False), ("tsit5", False, False),
                                                  ("euler", True, True), ("euler", False, True)])
def test_generate_shapes(tiny_ckpt, perov, solver, lattice, guide):
    model, meta = ck.load_generator(tiny_ckpt / "export")
    data = perov.subset(np.arange(2))
    y = np.asarray(PatternSource(data, meta.grid, Augment.off()).render(np.arange(2), jax.random.key(0)))
    cand = generate(model, meta, data.z, data.mask, y, 3, lattice=data.params if lattice else None, steps=4,
                    solver=solver, guidance=Guidance(strength=0.3, start=0.0) if guide else None, batch=4)
    assert cand.frac.shape == (2, 3, 5, 3) and cand.params.shape == (2, 3, 6)
    assert np.all((cand.frac >= 0) & (cand.frac < 1)) and np.all(np.isfinite(cand.params))
    if lattice:
        np.testing.assert_allclose(cand.params[:, 0], data.params)
    structs = cand.structures(0)
    assert len(structs) == 3 and all(s is None or s.composition == data.structures[0].composition for s in structs)


@needs_data
def test_exported_and_training_checkpoints_agree(tiny_ckpt):
    a, _ = ck.load_generator(tiny_ckpt / "run")
    b, meta = ck.load_generator(tiny_ckpt / "export")
    pa, pb = ck.flat_params(a)[0], ck.flat_params(b)[0]
    assert all(np.array_equal(np.asarray(pa[k]), np.asarray(pb[k])) for k in pa)
    assert meta.weights == "params" and meta.max_atoms == 5


@needs_data
def test_bad_checkpoints(tiny_ckpt, tmp_path):
    with pytest.raises(ck.CheckpointError, match="no such checkpoint"):
        ck.load_generator(tmp_path / "nope")
    bad = tmp_path / "bad"
    shutil.copytree(tiny_ckpt / "export", bad)
    (bad / "config.json").write_text("{not json")
    with pytest.raises(ck.CheckpointError, match="corrupt"):
        ck.load_generator(bad)
    shutil.rmtree(bad)
    shutil.copytree(tiny_ckpt / "export", bad)
    for f in (bad / "ckpt").rglob("*"):
        if f.is_file() and f.stat().st_size > 100:
            f.write_bytes(b"\0" * 64)
    with pytest.raises(ck.CheckpointError, match="cannot be restored"):
        ck.load_generator(bad)


@needs_data
def test_parse_composition(tiny_ckpt):
    _, meta = ck.load_generator(tiny_ckpt / "export")
    seen = meta.elements
    from pymatgen.core import Element
    f = "".join(Element.from_Z(z).symbol for z in seen[:2])
    assert parse_composition(f, meta) == sorted(seen[:2])
    with pytest.raises(ValueError, match="unknown element|cannot be parsed"):
        parse_composition("Xq2O3", meta)
    with pytest.raises(ValueError, match="at most 5"):
        parse_composition(f"{Element.from_Z(seen[0]).symbol}6", meta)
    with pytest.raises(ValueError, match="non-integer"):
        parse_composition(f"{Element.from_Z(seen[0]).symbol}0.5", meta)
    unseen = next(Element.from_Z(z).symbol for z in range(1, 90) if z not in seen)
    with pytest.raises(ValueError, match="never seen"):
        parse_composition(unseen, meta)


def _write_xy(path, tt, y):
    np.savetxt(path, np.column_stack([tt, y]), fmt="%.5f")
    return path


@needs_data
def test_solve_cli(tiny_ckpt, perov, tmp_path):
    """`xtaljax solve` end to end on a tiny model: candidates refined, ranked, written; bad
    input gives a one-line error and exit status 2."""
    from xtaljax.cli import main
    s = perov.structures[1]
    tt = np.arange(10.0, 80.0, 0.02)
    y = np.asarray(xj.simulate(from_pymatgen(s, b_iso=0.5), GRID.instrument(), tt)) * 1e4 + 20.0
    pat = _write_xy(tmp_path / "p.xy", tt, y)
    ckpt = str(tiny_ckpt / "export")
    formula = s.composition.formula.replace(" ", "")
    out = tmp_path / "out"
    lat = [f"{v:.5f}" for v in s.lattice.parameters]  # an untrained model's own lattices are rarely valid
    rc = main(["solve", str(pat), "--composition", formula, "--samples", "3", "--wavelength", "CuKa", "--lattice", *lat,
               "--checkpoint", ckpt, "--steps", "4", "--out", str(out)])
    assert rc == 0
    res = json.loads((out / "result.json").read_text())
    cands = res["candidates"]
    assert 1 <= len(cands) <= 3 and res["lattice_given"] and (out / cands[0]["cif"]).is_file()
    rwp = [c["rwp"] for c in cands if c["rwp"] is not None]
    assert rwp == sorted(rwp) and all(np.isfinite(rwp))
    base = ["--samples", "1", "--checkpoint", ckpt, "--steps", "2", "--out", str(tmp_path / "x")]
    assert main(["solve", str(pat), "--composition", "Qq3", "--wavelength", "CuKa"] + base) == 2
    assert main(["solve", str(pat), "--composition", formula * 3, "--wavelength", "CuKa"] + base) == 2
    # a 0.3 Å pattern over 10-80° maps (through d) onto 53-80° at Cu Kα1: too little of the model's range
    assert main(["solve", str(pat), "--composition", formula, "--wavelength", "0.3"] + base) == 2
    assert main(["solve", str(pat), "--composition", formula, "--wavelength", "CuKa", "--samples", "1",
                 "--checkpoint", str(tmp_path / "missing"), "--out", str(tmp_path / "y")]) == 2
    assert main(["solve", str(pat), "--composition", formula] + base) == 2  # no wavelength anywhere
    for bad in (["--swap-rounds", "-1"], ["--polish-steps", "-1"]):
        assert main(["solve", str(pat), "--composition", formula, "--wavelength", "CuKa", *bad] + base) == 2
    assert not (tmp_path / "x").exists()


@needs_data
def test_polish_lowers_pattern_loss_and_ranks(tiny_ckpt, perov):
    """The batched polish moves perturbed candidates toward the observed pattern (loss falls,
    coordinates approach the truth) and leaves invalid cells alone; reorder permutes samples."""
    from xtaljax.generate.api import Candidates
    from xtaljax.generate.polish import Polish, polish, reorder
    _, meta = ck.load_generator(tiny_ckpt / "export")
    data = perov.subset(np.arange(3))
    y = np.asarray(PatternSource(data, meta.grid, Augment.off()).render(np.arange(3), jax.random.key(0)))
    rng = np.random.default_rng(0)
    frac = np.repeat(data.frac[:, None], 2, axis=1) + rng.normal(0, 0.05, (3, 2, 5, 3))
    frac = np.mod(frac, 1.0)
    params = np.repeat(data.params[:, None], 2, axis=1).copy()
    params[2, 1, :3] = -1.0  # an invalid cell
    cand = Candidates(frac, params, data.z, data.mask, 0.0, 0.0)
    _, before = polish(cand, y, meta, settings=Polish(0, 0, swap_rounds=0, refine_lattice=False))
    new, after = polish(cand, y, meta, settings=Polish(20, 40, lr=0.002))
    ok = np.isfinite(before)
    assert not ok[2, 1] and np.array_equal(new.frac[2, 1], frac[2, 1])
    assert np.all(after[ok] <= before[ok]) and np.mean(after[ok]) < 0.5 * np.mean(before[ok])
    r = reorder(cand, np.array([[1, 0], [0, 1], [1, 0]]))
    np.testing.assert_array_equal(r.frac[0, 0], cand.frac[0, 1])
    np.testing.assert_array_equal(r.params[2, 0], cand.params[2, 1])


@needs_data
def test_polish_swap_search_and_lattice_strain(perov):
    """Decoration search: the truth with two atoms of different elements exchanged gets its
    elements back (loss ~0), where a plain polish of the same start cannot. Lattice strain: the
    truth's coordinates in a cell strained by ~0.2 % get the cell back. (The shipped model's
    pattern grid.)"""
    from xtaljax.generate.api import Candidates, default_checkpoint
    from xtaljax.generate.polish import Polish, polish, swap_pairs
    meta = ck.read_meta(default_checkpoint())
    data = perov.subset(np.arange(3))
    y = np.asarray(PatternSource(data, meta.grid, Augment.off()).render(np.arange(3), jax.random.key(0)))
    pairs = swap_pairs(data.z)
    assert np.array_equal(pairs[:, 0], np.zeros((3, 2))) and pairs.shape[1] >= 2
    for t in range(3):  # every listed pair exchanges atoms of different elements
        assert all(data.z[t, i] != data.z[t, j] for i, j in pairs[t, 1:] if (i, j) != (0, 0))
    frac = data.frac.copy()
    ij = pairs[:, 1]  # per target, two atoms of different elements: exchange their sites
    for t, (i, j) in enumerate(ij):
        frac[t, [i, j]] = frac[t, [j, i]]
    swapped = Candidates(frac[:, None], data.params[:, None], data.z, data.mask, 0.0, 0.0)
    _, plain = polish(swapped, y, meta, settings=Polish(0, 20, swap_rounds=0, refine_lattice=False))
    fixed, found = polish(swapped, y, meta, settings=Polish(0, 20, swap_rounds=2, refine_lattice=False))
    # the first polish moves the wrongly decorated atoms a little before the search: not exactly 0
    assert np.all(plain > 1e-3) and np.all(found < 0.1 * plain) and np.all(found < 5e-4), (plain, found)
    for t, (i, j) in enumerate(ij):  # the two atoms' separation is the truth's (the origin may drift)
        d = fixed.frac[t, 0, i] - fixed.frac[t, 0, j] - (data.frac[t, i] - data.frac[t, j])
        assert np.abs(np.mod(d + 0.5, 1.0) - 0.5).max() < 0.03, d  # a wrong element here: >= 0.2
    # the search never ends a lane higher than the plain polish of the same start (both are polished)
    noisy = np.mod(data.frac + np.random.default_rng(1).normal(0, 0.05, data.frac.shape), 1.0)
    start = Candidates(noisy[:, None], data.params[:, None], data.z, data.mask, 0.0, 0.0)
    _, l0 = polish(start, y, meta, settings=Polish(0, 20, swap_rounds=0, refine_lattice=False))
    _, l2 = polish(start, y, meta, settings=Polish(0, 20, swap_rounds=2, refine_lattice=False))
    assert np.all(l2 <= l0 + 1e-7), (l2, l0)
    strained = data.params.copy()
    strained[:, :3] *= np.array([1.002, 0.998, 1.0025])
    off = Candidates(data.frac[:, None], strained[:, None], data.z, data.mask, 0.0, 0.0)
    _, fixed_cell_loss = polish(off, y, meta, settings=Polish(30, 60, swap_rounds=0, refine_lattice=False))
    back, loss = polish(off, y, meta, settings=Polish(30, 60, swap_rounds=0))
    assert np.all(loss < 0.01 * fixed_cell_loss), (loss, fixed_cell_loss)
    np.testing.assert_allclose(back.params[:, 0, :3], data.params[:, :3], rtol=5e-4)


def test_bad_training_and_sampling_settings(tmp_path):
    """Nonsense settings give a one-line ValueError (exit 2 from the CLI), not a traceback."""
    from xtaljax.cli import main
    with pytest.raises(ValueError, match="batch"):
        TrainConfig(train_csv="x.csv", batch=0)
    with pytest.raises(ValueError, match="nothing to train"):
        TrainConfig(train_csv="x.csv", pretrain_steps=0, flow_steps=0)
    assert main(["generator", "train", "--train", str(PEROV), "--batch", "0", "--out", str(tmp_path / "t")]) == 2
    example = Path(xj.__file__).parent / "data" / "perov_example.xy"
    assert main(["solve", str(example), "--composition", "LaAlO3", "--wavelength", "CuKa", "--steps", "0", "--out",
                 str(tmp_path / "s")]) == 2
    assert not (tmp_path / "s").exists()
