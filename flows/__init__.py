"""Prefect flows, deployments, experiments and the `grokloop` CLI."""

import os

# The ephemeral server's telemetry fails loudly on machines with no internet; off unless asked for.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# Each Dask worker process starts an ephemeral server of its own; three at once on two busy cores took
# longer than Prefect's 20 s and failed every run ("Timed out while attempting to connect to ephemeral
# Prefect API server"). The workers inherit this from the process that imported flows.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
