"""A short schemathesis run over the whole OpenAPI schema of a real (writable) server: no 5xx, JSON error bodies.

The long run, with every schemathesis check and its report, is ``python -m lsr.eval.fuzz`` (eval/results/fuzz-sample.json).
"""

from __future__ import annotations

import json
import shutil

import pytest

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis is not installed: pip install 'lsr[dev]'")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402

from lsr.server.app import create_app  # noqa: E402

KEY = "fuzz-key"
EXAMPLES = 10  # per operation and generation mode: a guard in CI, not the fuzz run itself


@pytest.fixture(scope="module")
def app(tmp_path_factory, engine):
    target = tmp_path_factory.mktemp("fuzz") / "index"
    shutil.copytree(engine.index_dir, target)
    return create_app(target, load="now", warmup=False, api_key=KEY, read_api_key=None, timeout_s=60)


def test_fuzz_every_operation_no_5xx(app):
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {f"{op.method.upper()} {op.path}" for op in operations} >= {
        "GET /search", "POST /search", "POST /search/batch", "GET /documents/{doc_id}", "POST /documents",
        "DELETE /documents/{doc_id}", "GET /stats", "GET /healthz", "GET /limits"}
    seen: dict[str, set[int]] = {}
    problems: list[str] = []

    def fuzz(label: str, strategy, negative: bool) -> None:
        @given(data=st.data())
        @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        def run(data):
            response = data.draw(strategy).call(headers={"X-API-Key": KEY})
            seen.setdefault(label, set()).add(response.status_code)
            if response.status_code >= 500:
                problems.append(f"{label}: {response.status_code} {response.text[:300]}")
            elif response.status_code >= 400:
                ctype = response.headers.get("content-type") or [""]
                ctype = ctype[0] if isinstance(ctype, list) else ctype
                body = json.loads(response.text) if ctype.startswith("application/json") else None
                if not isinstance(body, dict) or "detail" not in body:
                    problems.append(f"{label}: {response.status_code} non-JSON error body {response.text[:200]!r}")

        try:
            run()
        except Unsatisfiable:
            assert negative, label  # an operation without inputs has no invalid variant to generate

    for op in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            fuzz(f"{op.method.upper()} {op.path}", op.as_strategy(generation_mode=mode),
                 mode == GenerationMode.NEGATIVE)
    assert not problems, "\n".join(problems[:20])
    assert {200} <= seen["GET /search"] | seen["POST /search"]  # the fuzzing reached real searches
    assert seen["POST /documents"] & {201, 409, 422}
