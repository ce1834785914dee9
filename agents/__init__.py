# The policies an agent runs (agents/policies.py; "mixed": solver and explorer episodes in turn), named here so
# that settings can be checked without importing the SDK and its pandas (flows.config, `grokloop --help`).
POLICIES = ("solver", "explorer", "mixed")
