"""Moves work from the one queue to the workers (one lane per device) and results to the output path.

- `lane`: one worker process, its batches and its health (crash loop, leak, restarts);
- `box`: the lanes together, fed from the queue by one scheduler;
- `writing`: a batch's images become stored, audited outputs.
"""

from daemon.dispatch.box import Box
from daemon.dispatch.lane import IN_FLIGHT, Lane, WorkerEvents
from daemon.dispatch.writing import NO_SPACE, OutputSink, OutputWriter

__all__ = ["IN_FLIGHT", "NO_SPACE", "Box", "Lane", "OutputSink", "OutputWriter", "WorkerEvents"]
