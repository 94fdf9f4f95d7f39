import os
from pathlib import Path

import pytest

import peapod

DATA = Path(os.environ.get("PEAPOD_DATA", Path(__file__).resolve().parents[3] / "data"))


@pytest.fixture(scope="session")
def data_root():
    return DATA


@pytest.fixture(scope="session")
def beauty():
    return peapod.datasets.load(DATA, "beauty")


@pytest.fixture(scope="session")
def toys():
    return peapod.datasets.load(DATA, "toys")
