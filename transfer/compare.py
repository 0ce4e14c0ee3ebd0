"""`python -m transfer.compare OUT`: rebuild a comparison's report from its saved runs (the
report itself is experiments/report.py)."""
from .cli import exit_now, report_main

if __name__ == "__main__":
    exit_now(report_main())
