"""``python -m mtbert_ray.sweep``: a study on Ray Tune; the form ``ray job submit`` runs — the same as ``mtbert-ray
sweep`` (``mtbert_ray.cli.sweep``).
"""
from mtbert_ray.cli.sweep import main

if __name__ == "__main__":
    main()
