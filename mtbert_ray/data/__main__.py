"""``python -m mtbert_ray.data prepare …``: the same as ``mtbert-ray data prepare …`` (``mtbert_ray.cli.data``)."""
from mtbert_ray.cli.data import main

if __name__ == "__main__":
    main()
