"""Point every alert's runbook_url at a runbook: BASE#<alert name in lower case>.

    python tools/runbook_urls.py                                  # the project's runbook (the default)
    python tools/runbook_urls.py --runbook-base https://wiki.example.com/distcomp/ALERTS.md
    python tools/runbook_urls.py --check                          # exit 1 if a URL differs (tests, CI)

Prometheus loads prometheus/rules/*.yml as they are, so the base URL is written into them, the way
the kube-prometheus mixins render `runbookURLPattern`. Only the `runbook_url:` lines change: the
comments and layout of the hand-written rules stay. A deployment with its own copy of the runbook
(docs/ALERTS.md: one section per alert, its heading the alert name) runs this once with its URL.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

DEFAULT_BASE = "https://github.com/distcomp-obs/distcomp-obs/blob/main/docs/ALERTS.md"
RULES = sorted((Path(__file__).resolve().parent.parent / "prometheus" / "rules").glob("*.yml"))

ALERT = re.compile(r"^\s*-\s+alert:\s*(\S+)\s*$")
RUNBOOK = re.compile(r"^(\s*runbook_url:\s*).*$")


def runbook_url(base: str, alert: str) -> str:
    return f"{base}#{alert.lower()}"


def rewrite(text: str, base: str) -> str:
    """The rules text with each alert's runbook_url line set from `base` (the alert named above it)."""
    out, alert = [], None
    for line in text.splitlines(keepends=True):
        if m := ALERT.match(line):
            alert = m.group(1)
        elif (m := RUNBOOK.match(line)) and alert:
            line = m.group(1) + runbook_url(base, alert) + "\n"
        out.append(line)
    return "".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runbook-base", default=DEFAULT_BASE, help="the runbook's URL, without #anchor")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a file would change")
    parser.add_argument("files", nargs="*", type=Path, default=RULES, help="rule files (default: prometheus/rules)")
    args = parser.parse_args(argv)
    stale = []
    for path in args.files:
        text = path.read_text()
        new = rewrite(text, args.runbook_base.rstrip("#"))
        if new != text:
            stale.append(path)
            if not args.check:
                path.write_text(new)
    for path in stale:
        print(f"{path}: {'runbook URLs differ' if args.check else 'runbook URLs updated'}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
