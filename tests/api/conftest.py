"""API tests run against both real stores: the ClickHouse server and chDB."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from hopscope.api.app import create_app
from hopscope.store import SqlStore, store_from_url
from tests.conftest import CLICKHOUSE_URL, require_service


@pytest.fixture(params=[pytest.param("clickhouse", marks=pytest.mark.clickhouse), "chdb"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SqlStore]:
    if request.param == "clickhouse":
        require_service("ClickHouse", CLICKHOUSE_URL.split("//")[1].split("/")[0])
        url = CLICKHOUSE_URL.rsplit("/", 1)[0] + f"/hs_test_{uuid.uuid4().hex[:8]}"
    else:
        url = f"chdb://{tmp_path}/chdb"
    s = store_from_url(url)
    s.ensure_schema()
    try:
        yield s
    finally:
        s.drop_schema()
        s.close()


@pytest.fixture
def client(store: SqlStore) -> TestClient:
    return TestClient(create_app(store), base_url="http://127.0.0.1")
