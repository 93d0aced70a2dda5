"""``python -m mtbert_ray.predict``: classify with an exported student — the same as ``mtbert-ray predict`` (``mtbert_ray.cli.predict``)."""
from mtbert_ray.cli.predict import main

if __name__ == "__main__":
    main()
