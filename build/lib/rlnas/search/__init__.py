"""The search: the Evaluator (the one seam to the oracles), ``ArchEditEnv``, rewards, agents (PPO,
random, evolution), logging and the Pareto front.

Entry point: ``rlnas-search`` (:mod:`rlnas.cli`; the run itself, top to bottom: :mod:`rlnas.pipeline`).
"""

from rlnas.search.agents import AgentResult, PPOAgent, RandomSearch, RegularizedEvolution
from rlnas.search.env import ArchEditEnv, Edit, apply_edit, edit_table, random_edit, valid_actions
from rlnas.search.reward import HardReward, Reward, SoftReward

__all__ = [
    "AgentResult", "ArchEditEnv", "Edit", "HardReward", "PPOAgent", "RandomSearch", "RegularizedEvolution",
    "Reward", "SoftReward", "apply_edit", "edit_table", "random_edit", "valid_actions",
]
