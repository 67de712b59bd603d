"""API fuzzing with schemathesis against the server's OpenAPI schema: no 5xx, and every 4xx/5xx body is JSON.

    python -m lsr.eval.fuzz --index DIR [--max-examples 50] [--out eval/results/fuzz.json]
    python -m lsr.eval.fuzz --build fuzz-index           # build a small index (the sample's module passages) first

Starts ``uvicorn`` on 127.0.0.1 (a free port) over a *copy* of the index (the write endpoints are fuzzed too, with
the server's API key, so documents get added and deleted), runs ``schemathesis run`` on ``/openapi.json`` for
every operation, and writes a JSON report: cases per operation, status-code histogram (overall and per
operation), check failures, and the count of 5xx responses (the pass criterion, with non-JSON error bodies).
Exits 1 if any response was a 5xx or an error body was not JSON.

Imported by schemathesis as a hooks module (``SCHEMATHESIS_HOOKS=eval.fuzz``), it registers the check
``json_error_body``.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CHECKS = "all"


# ---------------------------------------------------------------------- the custom check (hooks module)
def _register_checks() -> None:
    try:
        import schemathesis
    except ImportError:  # plain `python -m lsr.eval.fuzz` without schemathesis: main() reports it
        return

    @schemathesis.check
    def json_error_body(ctx, response, case):  # noqa: ARG001 - schemathesis' check signature
        """Every 4xx and 5xx answer is a JSON object with a ``detail``."""
        if response.status_code < 400:
            return None
        content_type = response.headers.get("content-type", [""])
        content_type = content_type[0] if isinstance(content_type, list) else content_type
        if not content_type.startswith("application/json"):
            raise AssertionError(f"{response.status_code} with content-type {content_type!r}, not JSON")
        try:
            body = json.loads(response.content)
        except ValueError as err:
            raise AssertionError(f"{response.status_code} body is not valid JSON: {err}") from None
        if not isinstance(body, dict) or "detail" not in body:
            raise AssertionError(f"{response.status_code} body has no 'detail': {str(body)[:200]}")
        return None


if os.environ.get("SCHEMATHESIS_HOOKS") == "lsr.eval.fuzz" and __name__ == "lsr.eval.fuzz":
    _register_checks()


# ---------------------------------------------------------------------- index and server
def build_sample_index(target: Path) -> Path:
    """A small index of the sample corpus's stdlib module passages (~110), with dense vectors when the dense model
    is installed and the bmp and seismic structures, so every retriever and mode can be fuzzed."""
    from lsr import Engine
    from lsr.dense import dense_model_available
    from lsr.sample import sample_documents

    corpus = Path(tempfile.mkdtemp(prefix="lsr-fuzz-corpus-"))
    try:
        with open(corpus / "corpus.jsonl", "w", encoding="utf-8") as f:
            for record in sample_documents():
                if record["_id"].startswith("module:"):
                    f.write(json.dumps(record) + "\n")
        Engine.build(corpus, target, progress=False, dense=dense_model_available(), structures=("bmp", "seismic"))
    finally:
        shutil.rmtree(corpus, ignore_errors=True)
    return target


def start_server(index_dir: Path, port: int, api_key: str, log_path: Path, timeout_s: float) -> subprocess.Popen:
    env = dict(os.environ, LSR_INDEX=str(index_dir), LSR_API_KEY=api_key, LSR_TIMEOUT=str(timeout_s))
    env.pop("LSR_READ_API_KEY", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    with open(log_path, "wb") as log:  # the child keeps its own descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--factory", "lsr.server.app:app_from_env", "--host", "127.0.0.1",
             "--port", str(port), "--log-level", "warning", "--no-access-log"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


# ---------------------------------------------------------------------- the run
def run_schemathesis(base: str, api_key: str, *, max_examples: int, seed: int, checks: str, workers: int,
                     phases: str | None, events_path: Path, max_time: float | None) -> int:
    exe = shutil.which("schemathesis") or shutil.which("st")
    cmd = [exe] if exe else [sys.executable, "-m", "schemathesis.cli"]
    cmd += ["run", f"{base}/openapi.json", "--checks", checks, "--max-examples", str(max_examples),
            "--seed", str(seed), "--workers", str(workers), "-H", f"X-API-Key: {api_key}",
            "--report", "ndjson", "--report-ndjson-path", str(events_path), "--request-timeout", "120",
            "--suppress-health-check", "all", "--no-color", "--continue-on-failure"]
    if phases:
        cmd += ["--phases", phases]
    if max_time:
        cmd += ["--max-time", str(max_time)]
    env = dict(os.environ, SCHEMATHESIS_HOOKS="lsr.eval.fuzz")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    print("$ " + " ".join(c if "X-API-Key" not in c else "X-API-Key: ***" for c in cmd), flush=True)
    # in the scratch directory: schemathesis keeps a .schemathesis/ cache of failing cases in its working directory
    return subprocess.run(cmd, env=env, cwd=events_path.parent).returncode


def summarize(events_path: Path) -> dict:
    """Cases, statuses and check failures from schemathesis' NDJSON events.

    Each ``ScenarioFinished`` event has a ``recorder`` with the operation's ``label`` ("POST /documents"), the
    ``interactions`` (one request and response per generated case) and the ``checks`` run on each case.
    Requests with another method than the operation's (schemathesis' unsupported-method probes) count under
    their own method.
    """
    cases: collections.Counter = collections.Counter()
    statuses: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    checks_run: collections.Counter = collections.Counter()
    failures: dict[tuple, dict] = {}
    for line in events_path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        event = json.loads(line).get("ScenarioFinished")
        if not event:
            continue
        recorder = event.get("recorder", {})
        label = recorder.get("label", "?")
        interactions = recorder.get("interactions") or {}
        for interaction in interactions.values():
            request, response = interaction.get("request") or {}, interaction.get("response") or {}
            if "status_code" not in response:
                continue
            op = _label(request)
            cases[op] += 1
            statuses[op][str(response["status_code"])] += 1
        for case_id, case_checks in (recorder.get("checks") or {}).items():
            for check in case_checks:
                checks_run[check.get("name")] += 1
                if check.get("status") == "success":
                    continue
                failure = (check.get("failure_info") or {}).get("failure") or {}
                key = (check.get("name"), failure.get("operation", label), failure.get("title"))
                entry = failures.setdefault(key, {
                    "check": check.get("name"), "code": failure.get("code"), "operation": key[1],
                    "title": failure.get("title"), "message": str(failure.get("message", ""))[:400], "count": 0,
                    "example": _example(interactions.get(case_id))})
                entry["count"] += 1
    total: collections.Counter = collections.Counter()
    for counter in statuses.values():
        total.update(counter)
    return {
        "cases": sum(cases.values()),
        "cases_per_operation": dict(sorted(cases.items(), key=lambda kv: (kv[0].split(" ", 1)[-1], kv[0]))),
        "status_histogram": dict(sorted(total.items())),
        "status_per_operation": {op: dict(sorted(c.items())) for op, c in sorted(statuses.items())},
        "server_errors_5xx": sum(n for code, n in total.items() if code.startswith("5")),
        "checks_run": dict(sorted(checks_run.items())),
        "failures": sorted(failures.values(), key=lambda f: (f["check"] or "", f["operation"] or "", f["title"] or "")),
    }


def _label(request: dict) -> str:
    """``METHOD /path`` with the path template of the operation (``/documents/{doc_id}``)."""
    from urllib.parse import urlsplit

    method = str(request.get("method", "?")).upper()
    path = urlsplit(request.get("uri") or request.get("url") or "").path
    if path.startswith("/documents/"):
        path = "/documents/{doc_id}"
    return f"{method} {path}"


def _example(interaction: dict | None) -> dict | None:
    """A failing case's request and response, decoded and cut short."""
    if not interaction:
        return None
    request, response = interaction.get("request") or {}, interaction.get("response") or {}
    return {"request": f"{request.get('method')} {request.get('uri')}"[:400], "body": _decode(request.get("body")),
            "status": response.get("status_code"), "response": _decode(response.get("content"))}


def _decode(value, limit: int = 400):
    import base64

    if isinstance(value, dict) and "$base64" in value:
        value = base64.b64decode(value["$base64"]).decode("utf-8", "replace")
    if value is None:
        return None
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= limit else text[:limit] + "…"


def main(argv: list[str] | None = None) -> int:
    from lsr.eval.loadtest import free_port, wait_until_ready
    from lsr.evaluation.results import portable_argv

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--index", type=Path, help="Index to serve (a copy is fuzzed; the original is untouched).")
    parser.add_argument("--build", type=Path, help="Build a small sample index here first (and fuzz it).")
    parser.add_argument("--max-examples", type=int, default=50, help="Examples per operation and phase.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checks", default=DEFAULT_CHECKS,
                        help="schemathesis checks (default: all of them; json_error_body is always added).")
    parser.add_argument("--phases", default=None, help="schemathesis phases (default: its own: all).")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--max-time", type=float, default=None, help="Time budget of the whole run (seconds).")
    parser.add_argument("--timeout", type=float, default=60.0, help="The server's per-request timeout.")
    parser.add_argument("--out", type=Path, default=ROOT / "eval" / "results" / "fuzz.json")
    parser.add_argument("--keep", type=Path, default=None,
                        help="Keep schemathesis' NDJSON events and the server log in this directory.")
    args = parser.parse_args(argv)
    try:
        import schemathesis
    except ImportError:
        print("schemathesis is not installed: pip install 'lsr[dev]' (or pip install schemathesis)", file=sys.stderr)
        return 2
    if args.build is not None:
        if not (args.build / "manifest.json").is_file():
            print(f"building a sample index at {args.build} …", flush=True)
            build_sample_index(args.build)
        args.index = args.index or args.build
    if args.index is None or not (args.index / "manifest.json").is_file():
        parser.error("give --index DIR (an existing index) or --build DIR")

    work = Path(tempfile.mkdtemp(prefix="lsr-fuzz-"))
    api_key = secrets.token_urlsafe(24)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    started = time.time()
    try:
        copy = work / "index"
        shutil.copytree(args.index, copy)
        server_log = work / "server.log"
        proc = start_server(copy, port, api_key, server_log, args.timeout)
        try:
            wait_until_ready(base, 300, proc)
            checks = args.checks if args.checks == "all" else ",".join([args.checks, "json_error_body"])
            code = run_schemathesis(base, api_key, max_examples=args.max_examples, seed=args.seed, checks=checks,
                                    workers=args.workers, phases=args.phases, events_path=work / "events.ndjson",
                                    max_time=args.max_time)
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        summary = summarize(work / "events.ndjson")
        log_text = server_log.read_text(encoding="utf-8", errors="replace")
        # the app logs "internal error on PATH" with the traceback; uvicorn logs what escapes the app
        tracebacks = [block for marker in ("internal error on ", "Exception in ASGI application")
                      for block in log_text.split(marker)[1:]]
        report = {
            "command": "python -m lsr.eval.fuzz " + portable_argv(argv if argv is not None else sys.argv[1:]),
            "schemathesis": schemathesis.__version__ if hasattr(schemathesis, "__version__") else None,
            "index_documents": _doc_count(args.index),
            "max_examples": args.max_examples, "seed": args.seed, "checks": checks,
            "schemathesis_exit_code": code, "seconds": round(time.time() - started, 1),
            **summary,
            "server_tracebacks": [t[:2000] for t in tracebacks[:20]],
        }
        json_failures = [f for f in summary["failures"] if f["check"] == "json_error_body"]
        report["ok"] = summary["server_errors_5xx"] == 0 and not json_failures and not tracebacks
    finally:
        if args.keep is not None:
            args.keep.mkdir(parents=True, exist_ok=True)
            for name in ("events.ndjson", "server.log"):
                if (work / name).exists():
                    shutil.copy(work / name, args.keep / name)
        shutil.rmtree(work, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(json.dumps({k: report[k] for k in ("cases", "cases_per_operation", "status_histogram",
                                              "server_errors_5xx", "ok")}, indent=2))
    print(f"{len(report['failures'])} distinct check failure(s); report: {args.out}")
    return 0 if report["ok"] else 1


def _doc_count(index_dir: Path) -> int | None:
    try:
        return json.loads((index_dir / "manifest.json").read_text())["num_docs"]
    except (OSError, ValueError, KeyError):
        return None


if __name__ == "__main__":
    sys.exit(main())
