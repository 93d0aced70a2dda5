"""Which teacher layer teaches which student layer."""
from __future__ import annotations


def layer_map(student_layers: int, teacher_layers: int) -> list[int]:
    """Teacher layer (1-based) for each student layer j = 1..K:  round_half_up(j · L / K), at least 1.

    With L = T·K (the paper's setting) this is exactly T·j. Teachers of any depth are
    allowed: a shallower teacher (K > L) teaches several consecutive student layers with
    the same layer. The embedding layer (0) is never used. The map is non-decreasing and
    always ends at the teacher's last layer L.

    Exact integer arithmetic: round_half_up(j·L/K) = (2·j·L + K) // (2·K).
    """
    if student_layers < 1 or teacher_layers < 1:
        raise ValueError(
            f"layer_map: student_layers and teacher_layers must be >= 1, got {student_layers}, {teacher_layers}"
        )
    return [max(1, (2 * j * teacher_layers + student_layers) // (2 * student_layers)) for j in range(1, student_layers + 1)]
