"""Prefect flows, deployments, experiments and the `grokloop` CLI."""

import os

# The ephemeral server's telemetry fails loudly on machines with no internet; off unless asked for.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# One ephemeral server serves the CLI and its local cluster's workers (flows/runners.py); on two busy
# cores its start took longer than Prefect's 20 s ("Timed out while attempting to connect to ephemeral
# Prefect API server"). Set here, so the worker processes see the same value.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
# Ray collapses like lines of its workers within 5 s, ignoring every word with a digit: the eval lines
# of an experiment's runs (`<run>-s0-... step 200 | ...`, one per run) would print as one "[repeated
# 3x across cluster]". Read when ray is imported, so set before.
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
