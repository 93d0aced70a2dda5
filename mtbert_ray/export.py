"""``python -m mtbert_ray.export``: ONNX / int8 export of a student — the same as ``mtbert-ray export`` (``mtbert_ray.cli.export``)."""
from mtbert_ray.cli.export import main

if __name__ == "__main__":
    main()
