"""The ``featpipe`` command line: a thin typer layer over the :mod:`featpipe` library."""
