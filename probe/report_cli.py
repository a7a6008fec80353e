"""``probe report``: registers the subcommand; the page itself is built by :mod:`probe.report`.

Apart from :mod:`probe.report` so that building ``probe``'s parser imports no pandas.
"""

from __future__ import annotations

import argparse


def register(sub) -> dict:
    """Add ``probe report`` to ``probe``'s subparsers; returns ``{"report": handler}``."""
    p = sub.add_parser(
        "report", help="turn run folders into one self-contained HTML page",
        description="Turn run folders (the folders probe commands write, each with a run.json) "
                    "into one HTML page: command and provenance, figures embedded, results "
                    "tables sorted and trimmed with a link to the full CSV. Reads offline.",
        epilog="example:\n  probe report runs/smollm2-135m/* --out report.html",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders (each with a run.json)")
    p.add_argument("--out", default="report.html", help="the HTML file (default: %(default)s)")
    p.add_argument("--title", default=None, help="page title (default: the run names)")
    p.add_argument("--max-rows", type=int, default=40,
                   help="rows shown of each results table (default: %(default)s)")

    def handler(args) -> int:
        from probe.report import write_report

        out = write_report(args.runs, args.out, title=args.title, max_rows=args.max_rows)
        print(f"report: {out} ({out.stat().st_size / 1e6:.1f} MB, {len(args.runs)} run(s))")
        return 0

    return {"report": handler}
