"""Property-based fuzzing of the live server from its own ``/openapi.json`` (schemathesis + hypothesis).

Bounded: a fixed number of examples per generation mode, derandomized (reproducible), no example
database, and a wall-clock cap per request (the client timeout).
"""

from __future__ import annotations

import collections
import time

import pytest
import requests

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from schemathesis.specs.openapi import checks as openapi_checks  # noqa: E402

POSITIVE_EXAMPLES = 300
NEGATIVE_EXAMPLES = 120
SUBMIT_EXAMPLES = 150


def test_fuzzing_finds_no_server_error_and_no_schema_violation(server):
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    checks = [
        schemathesis.checks.not_a_server_error,
        openapi_checks.status_code_conformance,
        openapi_checks.content_type_conformance,
        openapi_checks.response_headers_conformance,
        openapi_checks.response_schema_conformance,
    ]
    session = requests.Session()
    counts: collections.Counter = collections.Counter()
    created: list[str] = []
    start = time.monotonic()

    def fuzz(mode, examples, extra, target=schema):
        @given(case=target.as_strategy(generation_mode=mode))
        @settings(max_examples=examples, deadline=None, database=None, derandomize=True,
                  phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
        def run(case):
            response = case.call_and_validate(session=session, headers=server.headers, checks=checks + extra,
                                              timeout=10)
            counts[(mode.value, response.status_code)] += 1
            if case.method == "POST" and response.status_code == 202:
                created.append(response.json()["id"])

        run()

    fuzz(schemathesis.GenerationMode.POSITIVE, POSITIVE_EXAMPLES, [])
    fuzz(schemathesis.GenerationMode.NEGATIVE, NEGATIVE_EXAMPLES, [openapi_checks.negative_data_rejection])
    # the random job ids above mostly meet 404s: give the one body-taking route its own budget
    fuzz(schemathesis.GenerationMode.POSITIVE, SUBMIT_EXAMPLES, [], target=schema["/v1/jobs"]["POST"])
    for job_id in created:  # stop the (possibly long) jobs the fuzzer queued
        session.delete(f"{server.url}/v1/jobs/{job_id}", headers=server.headers, timeout=5)
    total = sum(counts.values())
    print(f"schemathesis: {total} cases in {time.monotonic() - start:.1f} s; by (mode, status): "
          f"{dict(sorted(counts.items()))}; jobs queued: {len(created)}")
    assert total >= POSITIVE_EXAMPLES + NEGATIVE_EXAMPLES + SUBMIT_EXAMPLES - 30
    assert not any(status >= 500 for _, status in counts)
