"""Performance reports from the job history (`sai report`): statistics, rendering, charts.

This package's modules need no daemon. Only this file is imported when `sai` builds its parser,
so it holds nothing heavier than the names the command line offers.
"""

METRICS = ("latency", "run", "wait")
FORMATS = ("md", "csv", "json")
