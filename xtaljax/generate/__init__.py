"""Flow-matching crystal-structure generator conditioned on a powder pattern and a composition
(PXRDGen-style, in Flax NNX), with refinement and ranking of the candidates.

Modules: :mod:`.data` (CDVAE CSVs, padded sets, patterns simulated on the fly), :mod:`.models`
(XRD encoders, CSPNet), :mod:`.flow` (flow matching, InfoNCE, diffrax sampling, XRD guidance),
:mod:`.train` (seeded, resumable training with orbax checkpoints), :mod:`.checkpoint`,
:mod:`.api` (generate, evaluation protocol), :mod:`.evaluate` (match rate / RMSE / validity),
:mod:`.rank` (refine and rank candidates), :mod:`.cli` (``xtaljax solve``, ``xtaljax generator``).
"""
