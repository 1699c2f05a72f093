"""Oracles that put numbers on architectures: measured latency (:mod:`~rlnas.oracles.latency`,
device profiles in :mod:`~rlnas.oracles.device`, the timing worker in
:mod:`~rlnas.oracles.worker`, its client in :mod:`~rlnas.oracles.worker_client`, the timing
settings and ratio statistics both use in :mod:`~rlnas.oracles.ratios`), accuracy (:mod:`~rlnas.oracles.accuracy`), the measurement store
(:mod:`~rlnas.oracles.store`) and the Evaluator that the search sees them through.

Nothing is imported here: ``python -m rlnas.oracles.worker`` must import neither torch nor NNCF.
"""
