"""rlnas: hardware-aware neural architecture search for OpenVINO INT8 on Intel CPUs."""

from pathlib import Path

__version__ = "0.1.0"

#: The Hydra config directory, shipped inside the package (works for non-editable installs too).
CONF_DIR = Path(__file__).resolve().parent / "conf"
#: The source checkout rlnas runs from (relative data and model paths are also tried against it).
REPO_DIR = Path(__file__).resolve().parent.parent
