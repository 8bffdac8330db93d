"""XRD loss-landscape analysis (issue 6; after Segal et al., Digital Discovery 5, 1590 (2026)).

* :mod:`.metrics` — differentiable pattern similarity / loss metrics (cosine, Pearson, MSE,
  spectral entropy, Wasserstein-1 over 2θ, soft-DTW), optional Gaussian broadening.
* :mod:`.mi` — mutual information (KSG k-NN, binned) and Pearson/Spearman (host side, NumPy/SciPy).
* :mod:`.distort` — seeded lattice-strain / coordinate-noise distortions.
* :mod:`.recover` — gradient-descent recovery (optax Adam, vmapped over distortions) in three
  parametrisations (``free``, ``family``, ``wyckoff``) and StructureMatcher matching.
* :mod:`.solve` — multi-start structure solution (random free Wyckoff coordinates, known space
  group and cell, one vmapped Adam run), results ranked by loss.
* :mod:`.study` — the study (structures × distortions × parametrisations × metrics) → report dict,
  :func:`.study.load_mp20` (rows of a CDVAE-format CSV), :func:`.study.plot_report`.
* :mod:`.slices` — 1-D/2-D loss slices along symmetry-template parameters.
* :mod:`.cli` — ``xtaljax landscape`` (``add_parser(subparsers)``, ``run(args)``).

Not imported by ``import xtaljax``; import ``xtaljax.landscape`` explicitly.
"""

from .metrics import METRICS, Metric, get_metric, gaussian_broaden  # noqa: F401
