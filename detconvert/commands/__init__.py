"""One module per ``detconvert`` subcommand (see :mod:`detconvert.cli`)."""
