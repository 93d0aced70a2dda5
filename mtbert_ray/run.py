"""``python -m mtbert_ray.run``: one experiment — the same as ``mtbert-ray run`` (``mtbert_ray.cli.run``)."""
from mtbert_ray.cli.run import main

if __name__ == "__main__":
    main()
