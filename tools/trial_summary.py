"""Turn trial's closing line into ``trial: N passed, M failed[, K skipped]``.

Usage: trial_summary.py LOGFILE TRIAL_EXIT_STATUS. Exits non-zero when trial
failed, when any test failed or errored, or when no test ran at all.
"""
import re
import sys


def summarize(log: str) -> tuple[int, int, int]:
    """Return (passed, failed, skipped) from trial's last PASSED/FAILED line."""
    lines = [l for l in log.splitlines() if re.match(r"^(PASSED|FAILED) \(", l)]
    if not lines:
        return 0, 0, 0
    counts = dict(
        (k, int(v)) for k, v in re.findall(r"(\w+)=(\d+)", lines[-1])
    )
    passed = counts.get("successes", 0) + counts.get("expectedFailures", 0)
    failed = (counts.get("failures", 0) + counts.get("errors", 0)
              + counts.get("unexpectedSuccesses", 0))
    return passed, failed, counts.get("skips", 0)


def main() -> int:
    with open(sys.argv[1], encoding="utf-8", errors="replace") as f:
        passed, failed, skipped = summarize(f.read())
    status = int(sys.argv[2])
    line = f"trial: {passed} passed, {failed} failed"
    if skipped:
        line += f", {skipped} skipped"
    print(line)
    if status or failed or passed == 0:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
