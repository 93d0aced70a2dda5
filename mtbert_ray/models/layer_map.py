"""Which teacher layer teaches which student layer."""
from __future__ import annotations


def layer_map(student_layers: int, teacher_layers: int, kind: str = "uniform") -> list[int]:
    """Teacher layer (1-based) for each student layer j = 1..K (``loss.layer_map``).

    uniform (default):  round_half_up(j · L / K), at least 1.
    last:               L − K + j, at least 1 — the teacher's top K layers, in order.

    With L = T·K (the paper's setting) uniform is exactly T·j. Teachers of any depth are
    allowed: a shallower teacher (K > L) teaches several consecutive student layers with
    the same layer. The embedding layer (0) is never used. The map is non-decreasing and
    always ends at the teacher's last layer L.

    Exact integer arithmetic: round_half_up(j·L/K) = (2·j·L + K) // (2·K).
    """
    if student_layers < 1 or teacher_layers < 1:
        raise ValueError(
            f"layer_map: student_layers and teacher_layers must be >= 1, got {student_layers}, {teacher_layers}"
        )
    if kind == "last":
        return [max(1, teacher_layers - student_layers + j) for j in range(1, student_layers + 1)]
    if kind != "uniform":
        raise ValueError(f"layer_map: kind must be 'uniform' or 'last', got {kind!r}")
    return [max(1, (2 * j * teacher_layers + student_layers) // (2 * student_layers)) for j in range(1, student_layers + 1)]
