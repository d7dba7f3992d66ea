"""Structural facts about a network that the bounding passes need."""

from __future__ import annotations

from verifier.network import MaxPool, Network, Relu


def relu_inputs(net: Network) -> tuple[int, ...]:
    """For each ReLU layer ``k``, the node holding its pre-activation."""
    return tuple(net.nodes[r].inputs[0] for r in net.relu_indices)


def bounded_nodes(net: Network) -> tuple[int, ...]:
    """Nodes whose bounds a relaxation needs (inputs of Relu and MaxPool), in topological order."""
    need = {n.inputs[0] for n in net.nodes if isinstance(n.op, (Relu, MaxPool))}
    return tuple(sorted(need))


def relu_layers_of(net: Network) -> dict[int, list[int]]:
    """Map from a pre-activation node to the ReLU layers ``k`` that read it."""
    out: dict[int, list[int]] = {}
    for k, p in enumerate(relu_inputs(net)):
        out.setdefault(p, []).append(k)
    return out


def ancestors(net: Network, node: int) -> set[int]:
    """``node`` and every node it depends on."""
    seen = {node}
    for i in range(node, -1, -1):
        if i in seen:
            seen.update(net.nodes[i].inputs)
    return seen
