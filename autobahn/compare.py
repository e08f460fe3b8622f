#!/usr/bin/env python3
"""Compares an Autobahn fuzzingclient report with the committed expectations.

usage: compare.py REPORT_DIR/index.json autobahn/expected-results.json

Every case's verdict (`behavior`) and closing verdict (`behaviorClose`) must
equal the expected ones; a case missing on either side is a difference too.
A change for the better also fails, so the expectations are updated on
purpose (rerun, review, commit the new file) rather than drifting.
"""

import json
import sys


def main():
    if len(sys.argv) != 3:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    with open(sys.argv[1]) as report_file:
        report = json.load(report_file)
    with open(sys.argv[2]) as expected_file:
        expected = json.load(expected_file)
    agents = list(report)
    if len(agents) != 1:
        print(f"compare: expected one agent in the report, found {agents}", file=sys.stderr)
        return 2
    actual = report[agents[0]]
    differences = []
    for case in sorted(set(expected) | set(actual)):
        want = expected.get(case)
        got = actual.get(case)
        got = None if got is None else {k: got.get(k) for k in ("behavior", "behaviorClose")}
        if want != got:
            differences.append(f"  case {case}: expected {want}, got {got}")
    if differences:
        print(f"autobahn: {len(differences)} case(s) differ from {sys.argv[2]}:")
        print("\n".join(differences))
        return 1
    print(f"autobahn: all {len(expected)} cases match {sys.argv[2]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
