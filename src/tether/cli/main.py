"""The `tether` (and `kubectl tether`) entry point."""

import click

from tether import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tether")
def main() -> None:
    """Run a local process in the context of a remote Kubernetes pod."""
