"""``serve run mtbert_ray.serve:app model_dir=FOLDER``: the Ray Serve application of an exported student
(``mtbert_ray.deploy.serve``; ``mtbert-ray serve FOLDER`` starts it too)."""
from mtbert_ray.deploy.serve import StudentDeployment, app

__all__ = ["StudentDeployment", "app"]
