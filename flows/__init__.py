"""Prefect flows, deployments, experiments and the `grokloop` CLI."""

import os

# The ephemeral server's telemetry fails loudly on machines with no internet; off unless asked for.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
