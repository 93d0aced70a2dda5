"""``python -m mtbert_ray.device_check``: the torch-only core on one device — the same as ``mtbert-ray device-check``
(``mtbert_ray.cli.device_check``).
"""
from mtbert_ray.cli.device_check import main

if __name__ == "__main__":
    main()
