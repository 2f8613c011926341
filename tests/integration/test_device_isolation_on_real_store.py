"""The device-isolation property test (tests/unit/test_device_isolation.py), a smaller run
on the real MongoDB-API server: the store's own matching of ids, keys and filters, not the
embedded store's."""

from __future__ import annotations

import pymongo
import pytest
from hypothesis import HealthCheck, given, settings

from tests.unit.test_device_isolation import check_isolation, scenarios

pytestmark = pytest.mark.integration


@settings(max_examples=6, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(scenarios())
def test_nothing_of_one_device_shows_up_in_or_disturbs_another_on_the_real_store(
        mongo_url: str, mongo_db: str, scenario) -> None:
    def fresh_store() -> dict[str, str]:
        with pymongo.MongoClient(mongo_url, serverSelectionTimeoutMS=5000) as client:
            client.drop_database(mongo_db)
        return {"MONGO_URL": mongo_url, "MONGO_DB": mongo_db}

    check_isolation(scenario, fresh_store)
