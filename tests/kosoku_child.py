"""The child that runs Autobahn|Testsuite cases with kosoku (tests/test_conformance.py).

``python tests/kosoku_child.py URL CASES EXCLUDED`` (comma-separated case ids
or ``*`` globs) prints one JSON object per case run.  Run by its path, not
as a module of ``tests``: kosoku puts its own ``autobahn`` (the case files'
py3 shim) first on the path, so the real Autobahn must not be imported
before it, and nothing here imports pushsvc.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys


async def run_cases(url: str, cases: list[str], excluded: list[str]) -> list[dict]:
    from kosoku import FailureError, run_fuzzingclient
    try:
        results = await run_fuzzingclient(url, cases, excluded)
    except FailureError as failure:  # some case did not pass: the results are kept
        results = failure.results
    return [{"id": r.case_id, "behavior": r.behavior.value,
             "behavior_close": r.behavior_close.value, "ms": r.duration,
             "result": r.result, "result_close": r.result_close,
             "remote_close_code": r.remote_close_code,
             "local_close_code": r.local_close_code} for r in results]


def main(argv: list[str]) -> None:
    url, cases, excluded = argv
    for case in asyncio.run(run_cases(url, cases.split(","), excluded.split(",") if excluded else [])):
        print(json.dumps(case))
    sys.stdout.flush()
    # Without interpreter finalization: kosoku 0.1.0's runtime aborts
    # (SIGABRT) in about one exit in 25 once the results are printed.
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1:])
