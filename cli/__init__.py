"""Typer apps behind the ``cals-*`` commands: options plus one library call each."""
