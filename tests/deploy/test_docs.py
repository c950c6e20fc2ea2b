"""docs/deploy.md's "When a deploy goes wrong" table is the one the tool's messages are built from."""

from __future__ import annotations

from pathlib import Path

from podserve.tooling.deploy import failures

DOC = Path(__file__).resolve().parents[2] / "docs" / "deploy.md"


def test_the_table_in_the_docs_is_the_tool_s():
    assert failures.table() in DOC.read_text(encoding="utf-8"), (
        "docs/deploy.md's table differs from podserve.tooling.deploy.failures; paste the output of "
        "python -c 'from podserve.tooling.deploy import failures; print(failures.table())'")


def test_every_failure_has_a_distinct_headline_and_an_exit_status():
    headlines = [f.headline for f in failures.ALL]
    assert len(set(headlines)) == len(headlines)
    assert {f.exit_code for f in failures.ALL} == {failures.EXIT_FAILED, failures.EXIT_REFUSED}
