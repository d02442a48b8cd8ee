"""One module per ``python -m netspec`` subcommand (see :mod:`netspec.cli`)."""
