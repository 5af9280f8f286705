"""Shared pytest setup: e2e/ is importable (kube, harness, cluster), and one cluster per session."""

import sys

import pytest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Keeps each phase's report on the test item, so fixtures can tell whether the test failed."""
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    """The control plane of e2e/controlplane.sh with the operator installed, or the cluster
    KUBECONFIG names (see cluster.py)."""
    from cluster import LIVE, open_cluster

    c = open_cluster(tmp_path_factory.mktemp("cluster"))
    LIVE.append(c)
    yield c
    LIVE.remove(c)
    c.close()
