import os

import pytest
import torch

# Several test processes may share the two cores: one thread each keeps them from fighting.
torch.set_num_threads(1)
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(autouse=True)
def _isolated_cwd(tmp_path, monkeypatch):
    """Every test runs in its own empty directory, so nothing is written into the repository."""
    monkeypatch.chdir(tmp_path)
