"""A new classification family is one file plus one config: dropped into a copy of the package,
it registers itself, composes as ``model=<name>`` and builds through the run setup."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import rlnas

FAMILY = '''
import dataclasses

from rlnas.spaces.registry import register_family
from rlnas.spaces.resnet import RESNET_TINY, ElasticResNet

RESNET_MINI = dataclasses.replace(RESNET_TINY, family="resnet_mini")


@register_family("resnet_mini")
def resnet_mini(num_classes: int = 10, stem: str = "cifar") -> ElasticResNet:
    return ElasticResNet(RESNET_MINI, num_classes, stem)
'''

CONFIG = "name: resnet_mini\nkwargs: {stem: cifar}\nresolution: 32\n"

PROBE = '''
import json

import torch
from hydra import compose, initialize_config_dir
import rlnas
from rlnas.runsetup import build_supernet
from rlnas.spaces import list_families

assert rlnas.__file__.startswith({root!r}), rlnas.__file__
with initialize_config_dir(config_dir=str(rlnas.CONF_DIR), version_base="1.3"):
    cfg = compose(config_name="config", overrides=["model=resnet_mini", "dataset=cifar10"])
supernet = build_supernet(cfg, num_classes=10)
small = supernet.space.min_arch()
net = supernet.extract(small)
print(json.dumps({{"families": list_families(), "family": supernet.space.family,
                  "logits": list(net(torch.zeros(1, 3, 32, 32)).shape),
                  "smaller": supernet.count_macs(small, 32) < supernet.count_macs(supernet.space.max_arch(), 32)}}))
'''


def test_a_new_family_is_one_file_plus_one_config(tmp_path: Path) -> None:
    package = tmp_path / "rlnas"
    shutil.copytree(Path(rlnas.__file__).parent, package, ignore=shutil.ignore_patterns("__pycache__"))
    (package / "spaces" / "resnet_mini.py").write_text(FAMILY)
    (package / "conf" / "model" / "resnet_mini.yaml").write_text(CONFIG)
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-c", PROBE.format(root=str(package))], capture_output=True,
                          text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    probe = json.loads(proc.stdout.strip().splitlines()[-1])
    assert {"resnet_mini", "resnet_tiny", "resnet50"} <= set(probe["families"])
    assert probe["family"] == "resnet_mini" and probe["logits"] == [1, 10] and probe["smaller"]
