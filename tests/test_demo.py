"""The README's main command: `lsr demo --serve` (what `make demo` runs) indexes the sample, searches, then serves."""

from __future__ import annotations

import subprocess
import sys

import httpx

from lsr import Engine
from lsr.eval.loadtest import free_port, wait_until_ready
from lsr.sample import sample_documents


def test_demo_indexes_searches_and_serves(tmp_path):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "lsr.cli", "demo", "--serve", "--port", str(port)], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(url, 600, proc)
        query = "how to parse command line arguments"
        hits = httpx.get(f"{url}/search", params={"q": query, "k": 3}, timeout=60).json()["hits"]
        assert hits[0]["id"].split("#")[0] in {"module:argparse", "module:getopt", "module:optparse"}
        assert httpx.get(f"{url}/search", params={"q": "open a file", "retriever": "hybrid"}, timeout=60).status_code == 200
        assert "<input" in httpx.get(url, timeout=30).text  # the search page
    finally:
        proc.terminate()
        output = proc.communicate(timeout=60)[0]
    passages = sum(1 for _ in sample_documents())  # built from this Python's own documentation: its size varies
    assert f"indexed {passages} documents" in output and "with dense vectors" in output
    assert "> how to parse command line arguments" in output and f"serving lsr_index on {url}/" in output
    assert (tmp_path / "lsr_index" / "manifest.json").is_file()
    library = Engine.open(tmp_path / "lsr_index").search(query, k=3)  # the server answers as the library does
    assert [h["id"] for h in hits] == [h.id for h in library]
