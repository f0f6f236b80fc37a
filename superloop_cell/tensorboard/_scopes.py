"""The name scopes of a superloop's step, and where to find them.

`SuperloopCell.call` opens one name scope per component: `sgu_0`, a fused
run `sgu_1_to_31`, `gru_cell`, `control`, `register_memory`, `attention`,
`neural_stack`... inside the cell's own scope. TensorFlow makes scopes
unique by appending `_1`, `_2`... (`superloop_cell_1/sgu_0/...`), so names
are matched with patterns that allow such a suffix on every segment.
"""

import re

from superloop_cell.superloop import check_superloop_cell

_SUFFIX = r"(?:_\d+)?"


def component_scopes(cell):
    """The name scopes of `cell`'s step, in the order the step runs them.

    Args:
        cell: A `SuperloopCell`.

    Returns:
        A list of str: one per stage (`sgu_0`, a fused run `sgu_1_to_31`,
        `gru_cell`...), then `control` and one per system when there are
        systems (`register_memory`, `attention`, `neural_stack`...).
    """
    check_superloop_cell(cell)
    return cell.scope_names


def scope_patterns(cell):
    """One compiled regex per component scope, keyed by the scope.

    A pattern matches an op name such as
    `functional_1/rnn_1/while/superloop_cell_1/sgu_0/sgu_cell_1/MatMul`:
    the component's scope must directly follow the cell's own scope, both
    with an optional `_N` suffix.
    """
    cell_scope = re.escape(cell.name) + _SUFFIX
    return {
        scope: re.compile(
            rf"(?:^|/){cell_scope}/{re.escape(scope)}{_SUFFIX}/"
        )
        for scope in component_scopes(cell)
    }


def scope_of(op_name, patterns):
    """The component scope an op name lies in, or None."""
    for scope, pattern in patterns.items():
        if pattern.search(op_name):
            return scope
    return None
