"""``python -m mtbert_ray.analysis``: a sweep's tables and plots — the same as ``mtbert-ray analysis`` (``mtbert_ray.cli.analysis``)."""
from mtbert_ray.cli.analysis import main

if __name__ == "__main__":
    main()
