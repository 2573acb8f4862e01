"""Command-line interface: argument parsing, config and progress output (thin)."""
