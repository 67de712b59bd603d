"""Bytes per document and per posting of every array and structure of an index directory.

    python -m lsr.eval.index_sizes INDEX_DIR [--json]

Each array of the manifest is listed with its dtype, its bytes on disk, bytes per document and bytes per
posting (of the base index), grouped by the structure that owns it (``base`` for the inverted and forward
arrays and anything else no structure lists), then one total line per group and for the whole index.
Side files (document store, dense graph, manifest) are counted in ``other``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lsr.index.storage import MANIFEST, read_manifest, side_files


def index_sizes(index_dir: Path) -> dict:
    """{"num_docs", "num_postings", "groups": {group: {array: {"dtype", "bytes"}}}} of an index directory."""
    index_dir = Path(index_dir)
    manifest = read_manifest(index_dir)
    owner = {name: s for s, info in manifest.get("structures", {}).items() for name in info.get("arrays", [])}
    groups: dict[str, dict[str, dict]] = {}
    for name, entry in sorted(manifest["arrays"].items()):
        path = index_dir / entry["file"]
        groups.setdefault(owner.get(name, "base"), {})[name] = {
            "dtype": entry["dtype"], "bytes": path.stat().st_size if path.exists() else 0}
    other = {MANIFEST: {"dtype": "json", "bytes": (index_dir / MANIFEST).stat().st_size}}
    for entry in side_files(manifest):
        path = index_dir / entry["file"]
        other[entry["file"]] = {"dtype": "file", "bytes": path.stat().st_size if path.exists() else 0}
    groups["other"] = other
    return {"num_docs": int(manifest["num_docs"]), "num_postings": int(manifest["num_postings"]), "groups": groups}


def format_table(sizes: dict) -> str:
    """A Markdown table of :func:`index_sizes`: bytes, B/doc and B/posting per array, group and index."""
    docs, postings = max(1, sizes["num_docs"]), max(1, sizes["num_postings"])

    def row(name: str, dtype: str, size: int) -> str:
        return f"| {name} | {dtype} | {size:,} | {size / docs:,.1f} | {size / postings:,.2f} |"

    lines = [f"{sizes['num_docs']:,} documents, {sizes['num_postings']:,} postings", "",
             "| array | dtype | bytes | B/doc | B/posting |", "|---|---|---:|---:|---:|"]
    total = 0
    for group, arrays in sizes["groups"].items():
        group_total = sum(a["bytes"] for a in arrays.values())
        total += group_total
        lines += [row(f"{group}/{name}", a["dtype"], a["bytes"]) for name, a in arrays.items()]
        lines.append(row(f"**{group} total**", "", group_total))
    lines.append(row("**index total**", "", total))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("index_dir", type=Path)
    parser.add_argument("--json", action="store_true", help="Print the sizes as JSON instead of a table.")
    args = parser.parse_args()
    sizes = index_sizes(args.index_dir)
    print(json.dumps(sizes, indent=2) if args.json else format_table(sizes))


if __name__ == "__main__":
    main()
