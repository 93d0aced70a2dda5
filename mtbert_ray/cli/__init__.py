"""The ``mtbert-ray`` command and its subcommands (each also ``python -m mtbert_ray.<name>``)."""
