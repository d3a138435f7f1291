"""CLI command groups, one module each; rescore.cli wires them into the app."""
