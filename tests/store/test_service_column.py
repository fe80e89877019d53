"""FlowRecord.service in both stores: DDL, round trip, and the column added to a table made without it."""

from __future__ import annotations

import pytest

from hopscope.records import Batch, FlowRecord
from hopscope.store import SqlStore
from hopscope.store.features import ServerFeatures
from hopscope.store.schema import schema_sql
from tests.store.records_factory import BASE_NS

SERVICES = ["http", "http,ssl", "", "dns", "ssh"]


def _flows(services: list[str], first_id: int = 1) -> list[FlowRecord]:
    return [FlowRecord(point="p", flow_id=first_id + i, start_ns=BASE_NS + first_id + i, final=1, service=s)
            for i, s in enumerate(services)]  # fmt: skip


@pytest.mark.parametrize(("version", "column"), [("18.16.1", "`service` String"),
                                                 ("26.9.2.1", "`service` LowCardinality(String)")])  # fmt: skip
def test_ddl_has_the_service_column(version: str, column: str) -> None:
    flows_ddl = next(sql for sql in schema_sql("hopscope", ServerFeatures.from_version(version)) if "`flows`" in sql)
    assert column in flows_ddl


def test_service_round_trip(ready_store: SqlStore) -> None:
    flows = _flows(SERVICES)
    ready_store.insert("flows", Batch.from_records(FlowRecord, flows))
    assert ready_store.query_flows(BASE_NS, BASE_NS + 100) == flows
    assert ready_store.query_flows(BASE_NS, BASE_NS + 100, {"service": "http,ssl"}) == [flows[1]]


def test_service_is_added_to_a_flows_table_made_without_it(ready_store: SqlStore) -> None:
    old = _flows(["", ""], first_id=1)
    ready_store.insert("flows", Batch.from_records(FlowRecord, old))
    ready_store._command(f"ALTER TABLE `{ready_store.database}`.`flows` DROP COLUMN `service`")  # a table of before
    ready_store.ensure_schema()
    assert "service" in ready_store._existing_columns("flows")
    new = _flows(["http", "dns"], first_id=10)
    ready_store.insert("flows", Batch.from_records(FlowRecord, new))
    assert ready_store.query_flows(BASE_NS, BASE_NS + 100) == old + new
