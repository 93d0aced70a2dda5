"""Model parts of MT-BERT: pooling, shared head, teacher ensemble, student, layer map, alignment, projections."""
from mtbert_ray.models.head import SharedHead
from mtbert_ray.models.layer_map import layer_map
from mtbert_ray.models.pooling import AttentivePooling
from mtbert_ray.models.projection import build_projections
from mtbert_ray.models.student import StudentModel, build_student
from mtbert_ray.models.teachers import TeacherEnsemble, TeacherOutput

__all__ = [
    "AttentivePooling",
    "SharedHead",
    "StudentModel",
    "TeacherEnsemble",
    "TeacherOutput",
    "build_projections",
    "build_student",
    "layer_map",
]
