"""The search product: ``ArchEditEnv``, rewards, agents (PPO, random, evolution), logging, the app.

Entry point: ``rlnas-search`` / ``python -m rlnas.search`` (:mod:`rlnas.search.app`).
"""

from rlnas.search.agents import AgentResult, PPOAgent, RandomSearch, RegularizedEvolution
from rlnas.search.env import ArchEditEnv, Edit, apply_edit, edit_table, random_edit, valid_actions
from rlnas.search.reward import HardReward, Reward, SoftReward

__all__ = [
    "AgentResult", "ArchEditEnv", "Edit", "HardReward", "PPOAgent", "RandomSearch", "RegularizedEvolution",
    "Reward", "SoftReward", "apply_edit", "edit_table", "random_edit", "valid_actions",
]
