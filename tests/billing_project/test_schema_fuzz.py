"""Schemathesis over /api/schema/: the internal API with the token never answers 5xx and keeps to its schema.

Every operation under /api/internal/ gets a bounded number of generated
requests (SCHEMA_FUZZ_EXAMPLES, default 25). Checks: no server error, the
status code is documented, the content type and the body conform.
"""

import os

import pytest
import schemathesis
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from billing_project.wsgi import application
from tests.tokens import auth_header

EXAMPLES = int(os.environ.get("SCHEMA_FUZZ_EXAMPLES", "25"))
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
# The schema sits behind the metrics token (issue 8); each operation gets its own scope's token.
schema = schemathesis.openapi.from_wsgi(
    "/api/schema/?format=json", application, headers=auth_header("/api/schema/")
).include(path_regex="^/api/internal/")


@pytest.fixture(autouse=True)
def _keep_the_test_connection():
    """Requests run in-process like Django's test client: the request signals must not close the test's connection."""
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


@pytest.mark.django_db
@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    # The same examples every run (CI must not pass or fail by chance); SCHEMA_FUZZ_RANDOM=1 explores anew.
    derandomize=os.environ.get("SCHEMA_FUZZ_RANDOM") != "1",
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_internal_api_conforms_to_its_schema(case, account) -> None:
    # Always the endpoint's real token: auth itself is not under test here
    # (tests/receipts/test_nobody_rides_free.py is).
    case.headers = {**(case.headers or {}), **auth_header(case.path)}
    case.call_and_validate(checks=CHECKS)
