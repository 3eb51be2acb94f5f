"""The generation worker: a child process that owns torch and the pipeline (main.py), and its
supervisor in the daemon (supervisor.py). They talk in JSON lines (ipc.py); images follow their
header line as raw bytes. The worker never sees a key and never writes an output file."""
