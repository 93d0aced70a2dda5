"""``python -m mtbert_ray …``: the ``mtbert-ray`` command (``mtbert_ray.cli.main``)."""
from mtbert_ray.cli.main import main

if __name__ == "__main__":
    main()
