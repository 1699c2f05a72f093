"""rlnas: hardware-aware neural architecture search for OpenVINO INT8 on Intel CPUs."""

from pathlib import Path

__version__ = "0.1.0"

#: The Hydra config directory (the repository's ``conf/``; rlnas is installed editable).
CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
