"""Split a model at its target layer with :mod:`torch.fx` to re-run only the part after it.

Ablation-CAM (Desai & Ramaswamy 2020) needs ``K`` forwards per image with one channel of the
target layer zeroed. When the network after the target layer depends *only* on the target's
output (no skip connection from an earlier layer, no use of the input), those forwards can start
at the target layer: we trace the model with the target treated as a leaf, keep the nodes that
descend from it and build a "tail" :class:`torch.fx.GraphModule` ``activation -> logits``. The
tail shares the model's submodules and parameters (no copy). When tracing fails or the tail
needs anything else, :func:`build_tail` returns ``None`` with the reason and the engine falls
back to full forwards with a hook replacing the layer's output.
"""

from __future__ import annotations

from torch import fx, nn

__all__ = ["build_tail"]


class _LeafTracer(fx.Tracer):
    """A tracer that keeps the target layer(s) as one ``call_module`` node each."""

    def __init__(self, leaf: str | tuple[str, ...]) -> None:
        super().__init__()
        self.leaves = (leaf,) if isinstance(leaf, str) else tuple(leaf)

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if module_qualified_name in self.leaves:
            return True
        if module_qualified_name == "" or any(
            leaf.startswith(module_qualified_name + ".") for leaf in self.leaves
        ):
            return False  # an ancestor of a target: trace through it
        return super().is_leaf_module(m, module_qualified_name)


def build_tail(model: nn.Module, layer: str) -> tuple[fx.GraphModule | None, str]:
    """Return ``(tail, reason)``; ``tail(activation) == model`` from ``layer`` onwards, or ``None``.

    ``reason`` says why no tail could be built (tracing error, layer not a single node, a node
    after the layer that uses an earlier value such as a skip connection). The tail's outputs
    are those of the model (a tensor of logits for a classifier).
    """
    try:
        tracer = _LeafTracer(layer)
        graph = tracer.trace(model)
    except Exception as exc:  # noqa: BLE001 - any tracing failure means "use the fallback"
        return None, f"torch.fx could not trace the model: {type(exc).__name__}: {exc}"
    targets = [n for n in graph.nodes if n.op == "call_module" and n.target == layer]
    if len(targets) != 1:
        return None, f"layer {layer!r} appears {len(targets)} times in the traced graph"
    target = targets[0]

    # descendants of the target, in graph (topological) order
    tail_nodes: set[fx.Node] = set()
    frontier = [target]
    while frontier:
        node = frontier.pop()
        for user in node.users:
            if user not in tail_nodes:
                tail_nodes.add(user)
                frontier.append(user)
    output = next(n for n in graph.nodes if n.op == "output")
    if output not in tail_nodes:
        return None, f"the model output does not depend on layer {layer!r}"

    allowed_inputs = tail_nodes | {target}
    needed_attrs: set[fx.Node] = set()
    for node in tail_nodes:
        for inp in node.all_input_nodes:
            if inp in allowed_inputs:
                continue
            if inp.op == "get_attr":
                needed_attrs.add(inp)
                continue
            return None, (
                f"node {node.name!r} after layer {layer!r} also uses {inp.name!r} computed "
                "before it (skip connection or input use)"
            )

    new_graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {target: new_graph.placeholder("activation")}
    for node in graph.nodes:
        if node in needed_attrs or (node in tail_nodes and node.op != "output"):
            env[node] = new_graph.node_copy(node, lambda n: env[n])
    new_graph.output(fx.map_arg(output.args[0], lambda n: env[n]))
    new_graph.lint()
    return fx.GraphModule(model, new_graph, class_name="CamTail"), ""
