"""Simplifications of tf2onnx's graph at export that onnxruntime cannot make at load time.

tf2onnx writes the model as TensorFlow computes it: the input's normalisation as element-wise ops
in front of the first layer, Flatten as a chain of Shape/Gather/Slice/Concat ops rebuilding a shape
that is static but for the batch, a Transpose back to TensorFlow's NHWC order before it, and a
Dense layer's batch norm as a Mul after its MatMul. onnxruntime keeps each of those as a kernel call
(at batch 1 they cost as much as a convolution). Each rewrite here folds one of them into the
weights of the layer it feeds, which is exact in real arithmetic: in float32 the results move by a
few ulps (export checks the simplified graph against tf2onnx's own, verify against Keras).

    static_reshapes         Reshape to a computed shape -> Reshape to [-1, static dims]
    fold_layout_into_matmul Transpose(NCHW -> NHWC) -> Reshape -> MatMul: the MatMul's rows permuted
    fold_affine_into_layers Conv/MatMul -> per-channel Mul/Add (bias, batch norm): into weights and bias
    fold_input_affine       input * a + b (one a and b for all: pixels) -> [Reshape/Transpose] ->
                            Conv or MatMul: into its weights and bias (a Conv's zero padding becomes
                            a Pad with the raw value -b/a, the one that normalises to zero)

Each rewrite matches a narrow pattern and leaves any other graph as it is.
"""

from __future__ import annotations

import numpy as np

LAYOUT_OPS = ("Reshape", "Transpose")
NCHW_TO_NHWC = [0, 2, 3, 1]


class Graph:
    """Lookups over an ONNX ModelProto's main graph, with the few edits the rewrites need."""

    def __init__(self, model):
        self.model = model
        self.graph = model.graph

    def constant(self, name: str) -> np.ndarray | None:
        from onnx import numpy_helper

        tensor = next((t for t in self.graph.initializer if t.name == name), None)
        return None if tensor is None else numpy_helper.to_array(tensor)

    def set_constant(self, name: str, value: np.ndarray) -> str:
        from onnx import numpy_helper

        tensor = numpy_helper.from_array(np.ascontiguousarray(value), name)
        for i, existing in enumerate(self.graph.initializer):
            if existing.name == name:
                self.graph.initializer[i].CopyFrom(tensor)
                return name
        self.graph.initializer.append(tensor)
        return name

    def consumers(self, name: str) -> list:
        return [n for n in self.graph.node if name in n.input]

    def only_consumer(self, name: str):
        users = self.consumers(name)
        graph_outputs = {o.name for o in self.graph.output}
        return users[0] if len(users) == 1 and name not in graph_outputs else None

    def rewire(self, old: str, new: str) -> None:
        """Every use of tensor `old` reads `new` instead."""
        for node in self.graph.node:
            for i, name in enumerate(node.input):
                if name == old:
                    node.input[i] = new

    def insert_before(self, anchor, node) -> None:
        self.graph.node.insert(list(self.graph.node).index(anchor), node)

    def insert_after(self, anchor, node) -> None:
        self.graph.node.insert(list(self.graph.node).index(anchor) + 1, node)

    def static_shapes(self) -> dict[str, list[int | None]]:
        """Every tensor's inferred shape (None for a symbolic dimension such as the batch)."""
        from onnx import shape_inference

        inferred = shape_inference.infer_shapes(self.model, data_prop=True).graph
        shapes = {}
        for value in [*inferred.value_info, *inferred.input, *inferred.output]:
            dims = value.type.tensor_type.shape.dim
            shapes[value.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]
        return shapes

    def prune(self) -> None:
        """Drop nodes and initializers that no graph output depends on."""
        needed = {o.name for o in self.graph.output}
        kept = []
        for node in reversed(self.graph.node):
            if any(name in needed for name in node.output):
                kept.append(node)
                needed.update(node.input)
        del self.graph.node[:]
        self.graph.node.extend(reversed(kept))
        initializers = [t for t in self.graph.initializer if t.name in needed]
        del self.graph.initializer[:]
        self.graph.initializer.extend(initializers)


def attribute(node, name: str, default=None):
    from onnx import helper

    found = next((a for a in node.attribute if a.name == name), None)
    return default if found is None else helper.get_attribute_value(found)


def static_reshapes(g: Graph) -> int:
    shapes = g.static_shapes()
    changed = 0
    for node in g.graph.node:
        if node.op_type != "Reshape" or g.constant(node.input[1]) is not None:
            continue
        target = shapes.get(node.output[0])
        if target and target[0] is None and all(target[1:]):
            node.input[1] = g.set_constant(node.output[0] + "/static_shape", np.array([-1, *target[1:]], np.int64))
            changed += 1
    return changed


def fold_layout_into_matmul(g: Graph) -> int:
    shapes = g.static_shapes()
    changed = 0
    for transpose in [n for n in g.graph.node if n.op_type == "Transpose"]:
        if list(attribute(transpose, "perm", [])) != NCHW_TO_NHWC:
            continue
        reshape = g.only_consumer(transpose.output[0])
        if reshape is None or reshape.op_type != "Reshape":
            continue
        target, source = g.constant(reshape.input[1]), shapes.get(transpose.input[0])
        matmul = g.only_consumer(reshape.output[0])
        if target is None or len(target) != 2 or not source or not all(source[1:]) or matmul is None:
            continue
        weights = g.constant(matmul.input[1]) if matmul.op_type == "MatMul" else None
        _, channels, height, width = source
        if weights is None or weights.shape[0] != channels * height * width:
            continue
        # Row r of the weights met NHWC position (h, w, c); the NCHW flatten puts (c, h, w) there.
        permuted = weights.reshape(height, width, channels, -1).transpose(2, 0, 1, 3).reshape(weights.shape)
        matmul.input[1] = g.set_constant(matmul.input[1] + "/nchw_rows", permuted)
        reshape.input[0] = transpose.input[0]
        changed += 1
    return changed


def per_channel(value: np.ndarray | None, layer, channels: int) -> np.ndarray | None:
    """`value` as one number per output channel of `layer` if it broadcasts that way, else None:
    a Conv's output is [N, C, H, W] (a constant [1, C, 1, 1] or [C, 1, 1]), a MatMul's [N, C]."""
    if value is None or value.dtype != np.float32:
        return None
    if value.size == 1:
        return np.full(channels, value.reshape(()), np.float32)
    if layer.op_type == "Conv":
        fits = value.shape in ((channels, 1, 1), (1, channels, 1, 1))
    else:
        fits = value.shape in ((channels,), (1, channels))
    return value.reshape(-1) if fits else None


def fold_affine_into_layers(g: Graph) -> int:
    """Conv or MatMul followed by per-channel Mul/Add constants (its bias, a batch norm): the chain
    into the layer's weights and one bias, (x·W + c)·s + t = x·(W·s) + (c·s + t)."""
    changed = 0
    for layer in [n for n in g.graph.node if n.op_type in ("Conv", "MatMul")]:
        weights = g.constant(layer.input[1])
        if weights is None or weights.dtype != np.float32 or weights.ndim != (4 if layer.op_type == "Conv" else 2):
            continue
        channels = weights.shape[0] if layer.op_type == "Conv" else weights.shape[1]
        scale = np.ones(channels, np.float32)
        bias = g.constant(layer.input[2]) if len(layer.input) > 2 else np.zeros(channels, np.float32)
        if bias is None:
            continue
        chain, tensor = [], layer.output[0]
        while (node := g.only_consumer(tensor)) is not None and node.op_type in ("Mul", "Add"):
            if node.input[0] != tensor or (value := per_channel(g.constant(node.input[1]), layer, channels)) is None:
                break
            if node.op_type == "Mul":
                scale, bias = scale * value, bias * value
            else:
                bias = bias + value
            chain.append(node)
            tensor = node.output[0]
        mul_in_chain = any(n.op_type == "Mul" for n in chain)
        if not chain or (layer.op_type == "MatMul" and not mul_in_chain and len(chain) == 1):
            continue  # MatMul + one Add is already what onnxruntime fuses into Gemm
        shape = (-1, 1, 1, 1) if layer.op_type == "Conv" else (1, -1)
        layer.input[1] = g.set_constant(layer.input[1] + "/folded", (weights * scale.reshape(shape)).astype(np.float32))
        name = g.set_constant(chain[-1].output[0] + "/folded_bias", bias.astype(np.float32))
        if layer.op_type == "Conv":
            del layer.input[2:]
            layer.input.append(name)
            g.rewire(tensor, layer.output[0])
        else:
            add = chain[-1]  # the chain's last node becomes the one bias Add (the others are pruned)
            add.op_type = "Add"
            del add.input[:]
            add.input.extend([layer.output[0], name])
        changed += 1
    return changed


def input_affine(g: Graph):
    """The graph input's `x * a + b` (after an optional Cast): (mul, add, a, b), or None."""
    (graph_input,) = g.graph.input
    first = g.only_consumer(graph_input.name)
    mul = g.only_consumer(first.output[0]) if first is not None and first.op_type == "Cast" else first
    if mul is None or mul.op_type != "Mul":
        return None
    add = g.only_consumer(mul.output[0])
    if add is None or add.op_type not in ("Add", "Sub") or add.input[0] != mul.output[0]:
        return None
    a, b = g.constant(mul.input[1]), g.constant(add.input[1])
    if a is None or b is None or a.dtype != np.float32 or b.dtype != np.float32:
        return None
    return mul, add, a, (-b if add.op_type == "Sub" else b)


def fold_input_affine(g: Graph) -> int:
    found = input_affine(g)
    if found is None:
        return 0
    mul, add, a, b = found
    layout, layer = [], g.only_consumer(add.output[0])
    while layer is not None and layer.op_type in LAYOUT_OPS:
        layout.append(layer)
        layer = g.only_consumer(layer.output[0])
    if layer is None or g.constant(layer.input[1]) is None:
        return 0
    # One scale and offset for every value only (pixels): with one per feature (a table's, or a colour
    # image's per channel) the int8 file would quantize the raw features at the layer's input with one
    # scale for all of them, which ranges of 0.1 beside 1,000 do not survive (breast cancer's int8
    # ONNX accuracy fell from 0.96 to 0.63 that way); their normalisation stays in front.
    if a.size != 1 or b.size != 1:
        return 0
    if layer.op_type == "Conv" and float(a.reshape(())) != 0 and explicit_2d_pads(layer) is not None:
        fold_affine_into_conv(g, layer, float(a.reshape(())), float(b.reshape(())))
    elif layer.op_type == "MatMul":
        fold_affine_into_matmul(g, layer, a, b)
    else:
        return 0
    g.rewire(add.output[0], mul.input[0])
    return 1


def explicit_2d_pads(conv) -> list[int] | None:
    """A 2-D Conv's pads [top, left, bottom, right], or None when it pads by auto_pad or is not 2-D."""
    if len(attribute(conv, "kernel_shape", [])) != 2:
        return None
    auto_pad = attribute(conv, "auto_pad", b"NOTSET")
    pads = list(attribute(conv, "pads", [0, 0, 0, 0]))
    return pads if auto_pad in (b"NOTSET", "NOTSET", b"VALID", "VALID") and len(pads) == 4 else None


def fold_affine_into_conv(g: Graph, conv, a: float, b: float) -> None:
    """conv(a·x + b) = conv'(x) with weights a·W and bias + b·ΣW, once the zero padding (zero after
    normalising) is made explicit on the raw side as -b/a."""
    from onnx import helper

    weights = g.constant(conv.input[1])
    bias = g.constant(conv.input[2]) if len(conv.input) > 2 else np.zeros(weights.shape[0], weights.dtype)
    name = conv.output[0]
    conv.input[1] = g.set_constant(name + "/folded_weights", (weights * np.float32(a)).astype(weights.dtype))
    shifted = bias + np.float32(b) * weights.sum(axis=(1, 2, 3))
    folded_bias = g.set_constant(name + "/folded_bias", shifted.astype(bias.dtype))
    if len(conv.input) > 2:
        conv.input[2] = folded_bias
    else:
        conv.input.append(folded_bias)
    pads = explicit_2d_pads(conv)
    if any(pads):
        top, left, bottom, right = pads
        widths = g.set_constant(name + "/raw_pads", np.array([0, 0, top, left, 0, 0, bottom, right], np.int64))
        value = g.set_constant(name + "/raw_pad_value", np.array(-b / a, np.float32))
        pad = helper.make_node(
            "Pad", [conv.input[0], widths, value], [name + "/raw_padded"], name=name + "/raw_pad", mode="constant"
        )
        g.insert_before(conv, pad)
        conv.input[0] = pad.output[0]
        kept = [x for x in conv.attribute if x.name != "pads"]
        del conv.attribute[:]
        conv.attribute.extend(kept)


def fold_affine_into_matmul(g: Graph, matmul, a: np.ndarray, b: np.ndarray) -> None:
    """(a·x + b)·W = x·(a·W) + b·ΣW (a, b scalars)."""
    from onnx import helper

    weights = g.constant(matmul.input[1])
    name = matmul.output[0]
    matmul.input[1] = g.set_constant(name + "/folded_weights", (weights * a.reshape(())).astype(weights.dtype))
    shift = (float(b.reshape(())) * weights.astype(np.float64).sum(axis=0)).astype(weights.dtype)
    after = g.only_consumer(name)
    bias = g.constant(after.input[1]) if after is not None and after.op_type == "Add" else None
    if bias is not None and bias.shape == shift.shape:
        after.input[1] = g.set_constant(after.input[1] + "/folded", bias + shift)
        return
    add = helper.make_node("Add", [name + "/folded_out", g.set_constant(name + "/folded_shift", shift)], [name])
    matmul.output[0] = name + "/folded_out"
    g.insert_after(matmul, add)


REWRITES = (static_reshapes, fold_layout_into_matmul, fold_affine_into_layers, fold_input_affine)


def simplify(model) -> list[str]:
    """Apply every rewrite to `model` in place; returns the names of those that changed it."""
    g = Graph(model)
    applied = []
    for rewrite in REWRITES:
        if rewrite(g):
            applied.append(rewrite.__name__)
            g.prune()
    return applied
