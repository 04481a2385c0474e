"""The round loop and what keeps a run alive.

The orchestrator, client guard, signals, distributed ranks, RNG state, checkpoint format, resume, loggers and
selection telemetry. The engine never reads the config and never imports the study tools.
"""
