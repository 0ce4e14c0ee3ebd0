"""`python -m transfer.report OUT` (or `transfer-report OUT`): rebuild the report of a comparison,
sweep or suite from its saved runs (the report itself is experiments/report.py)."""
from .cli import exit_now, report_main

if __name__ == "__main__":
    exit_now(report_main())
