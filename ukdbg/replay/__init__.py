"""ukdbg/replay: deterministic record (`ukdbg run --record FILE`) and replay
(`ukdbg replay FILE`) of hvt unikernels. docs/replay.md describes the design and the
file format.

  format.py     the versioned, compressed, chunked event stream (writer and reader)
  traps.py      finding RDTSC/RDTSCP/RDRAND/RDSEED in the image; their emulation
  recorder.py   hooks on a live Machine that write the stream (loaded only with --record)
  replayer.py   the replay driver: a Machine fed from the stream, checked at each event

The tender never imports this package: tender/run.py loads recorder.py by name only
when --record is given, and `ukdbg replay` starts here.
"""
