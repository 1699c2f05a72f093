"""a0 + each real run's best feasible search IR timed in the same interleaved rounds, 3 passes (README, model-based PPO).

    .venv/bin/python experiments/confirm_agents.py
"""
import json
from pathlib import Path

from hydra import compose, initialize_config_dir

import rlnas
from rlnas.finalists import combine_passes
from rlnas.oracles.ratios import TimingConfig
from rlnas.runsetup import build_setup

runs = {"evolution": "evo_a0_hard_b100", "ppo_model": "ppo_model_hard_b50", "ppo_soft_s4": "from_a0_b100"}
irs = {}
for name, run in runs.items():
    lines = Path(f"outputs/search/resnet50_cifar10_avx2/{run}/evaluations.jsonl").read_text().splitlines()
    c = [json.loads(line)["measurement"] for line in lines if '"candidate"' in line[:30]]
    for budget in ((50, 100) if name == "evolution" else (len(c),)):
        best = min((m for m in c[:budget] if m["feasible"]), key=lambda m: m["latency_ratio"])
        irs[f"{name}@{budget}"] = best["ir_path"]
        print(name, budget, round(best["latency_ratio"], 3), best["acc_int8"], best["ir_path"])
with initialize_config_dir(config_dir=str(rlnas.CONF_DIR), version_base="1.3"):
    cfg = compose(config_name="config", overrides=["experiment=resnet50_cifar10_avx2",
                  "supernet.checkpoint=outputs/supernet/resnet50-cifar10-from_a0"])
setup = build_setup(cfg)
baseline = setup.evaluator(None).baseline
irs = {"a0": baseline.ir_path, **irs}
timing = TimingConfig(**{**vars(setup.latency.timing), "min_rounds": 30, "min_time_s": 20.0, "max_time_s": 240.0})
passes = [setup.latency.confirm(irs, "a0", timing, force=True, repeat=p) for p in range(3)]
combined = combine_passes(passes)  # as the finalists' confirmation: median over the passes
for p, conf in enumerate(passes):
    print("pass", p, conf.rounds, {k: round(v, 3) for k, v in conf.ratio.items()})
print({k: (round(combined["ratio"][k], 3), round(min(v), 3), round(max(v), 3))
       for k, v in combined["ratio_by_pass"].items()})
setup.close()
