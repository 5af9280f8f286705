"""Shared pytest setup: e2e/ is importable (kubeapi, kube, harness)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
