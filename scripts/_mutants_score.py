"""Score of a mutmut run per package, from ``mutmut results --all true`` on stdin.

Killed (a test failed, or the mutant hung past mutmut's timeout) over checked; "no tests" counts as
alive: no fast unit test runs that code at all.
"""

import collections
import sys

PACKAGES = {
    "domain": ("keyplane.domain.",),
    "ratelimit": ("keyplane.ratelimit.",),
    # The status and ack path: the feed, its routes, and the gateways' rows they write.
    "propagation": ("keyplane.propagation.", "keyplane.storage.gateways."),
    "gateway": ("keyplane.gateway.",),
}
COLUMNS = ("killed", "timeout", "survived", "no tests", "not checked")

counts: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
for line in sys.stdin:
    name, _, status = line.strip().rpartition(": ")
    package = next((p for p, prefixes in PACKAGES.items() if name.startswith(prefixes)), None)
    if package is not None:
        counts[package][status] += 1

print(f"{'package':<12}{'mutants':>9}" + "".join(f"{c:>13}" for c in COLUMNS) + f"{'score':>8}")
for package, c in sorted(counts.items()):
    killed = c["killed"] + c["timeout"]
    checked = killed + c["survived"] + c["no tests"]
    share = f"{100 * killed / checked:.1f}%" if checked else "-"
    row = "".join(f"{c[column]:>13}" for column in COLUMNS)
    print(f"{package:<12}{sum(c.values()):>9}{row}{share:>8}")
