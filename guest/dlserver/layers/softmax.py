"""Softmax layer (Darknet softmax_layer.c, blas.c softmax_cpu, tree.c read_tree).

Per batch row of n = inputs values, temperature T (default 1):
  groups = g (g divides n): g independent softmaxes over consecutive runs of n/g values;
  y_i = f32(exp(x_i/T - max/T)) / sum_j f32(exp(x_j/T - max/T)) (float sum in order).
tree = FILE (hierarchical softmax, YOLO9000's WordTree): the file has one line per class,
  `name parent` (parent: the line index of its parent, -1 for a root; parents come before
  their children). Consecutive lines with the same parent form a group; the softmax runs
  over each group separately (Darknet's CPU forward_softmax_layer). The class probability of
  a leaf is then the product along its path (tree.c hierarchy_predictions, in the detector).
Loss (training with truth, not noloss): delta = t - y, cost = sum over t != 0 of -log(y)
  (Darknet's CPU path does not mask the tree's untouched groups: neither do we).
backward: prev_delta += delta.
"""

from array import array

from .. import kernels
from ..config import read_text
from ..errors import DLServerError
from ..rng import f32
from .base import Layer


class Tree:
    """Darknet's tree (read_tree): parent, child (group of the children, -1 for none) and
    group (the group index it belongs to) per class; group_offset and group_size per group."""

    def __init__(self, names: list[str], parents: list[int]):
        n = len(names)
        self.n = n
        self.names = names
        self.parent = array("i", parents)
        self.child = array("i", [-1] * n)
        self.group = array("i", [0] * n)
        offsets: list[int] = []
        sizes: list[int] = []
        last_parent, group_size, groups = -1, 0, 0
        for i, parent in enumerate(parents):
            if parent != last_parent:
                groups += 1
                offsets.append(i - group_size)
                sizes.append(group_size)
                group_size = 0
                last_parent = parent
            self.group[i] = groups
            if parent >= 0:
                self.child[parent] = groups
            group_size += 1
        offsets.append(n - group_size)
        sizes.append(group_size)
        self.groups = groups + 1
        self.group_offset = array("i", offsets)
        self.group_size = array("i", sizes)
        self.leaf = [True] * n
        for parent in parents:
            if parent >= 0:
                self.leaf[parent] = False


def read_tree(path: str, where: str) -> Tree:
    """A WordTree file (`name parent` lines); errors start with `where` (the cfg's file:line)."""
    try:
        text = read_text(path, "tree file")
    except DLServerError as e:
        raise DLServerError(f"{where}: tree={path}: {e}") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    names: list[str] = []
    parents: list[int] = []
    for number, line in enumerate(lines, 1):
        fields = line.split()
        if not fields:
            raise DLServerError(f"{path}:{number}: tree file line has no class name (tree= at {where})")
        parent = -1
        if len(fields) > 1:
            try:
                parent = int(fields[1])
            except ValueError:
                raise DLServerError(
                    f"{path}:{number}: tree file: parent '{fields[1]}' is not an integer (tree= at {where})"
                ) from None
        if not -1 <= parent < len(names):
            raise DLServerError(
                f"{path}:{number}: tree file: parent {parent} is not an earlier line (tree= at {where})"
            )
        names.append(fields[0])
        parents.append(parent)
    if not names:
        raise DLServerError(f"{path}: tree file is empty (tree= at {where})")
    return Tree(names, parents)


class SoftmaxLayer(Layer):
    kind = "softmax"

    def __init__(self, options, batch, h, w, c, inputs):
        super().__init__(batch, h, w, c, inputs)
        where = f"{options.path}:{options.line}"
        self.groups = options.find_int("groups", 1, quiet=True)
        if self.groups < 1 or inputs < 1 or inputs % self.groups:
            raise DLServerError(
                f"{where}: softmax groups={self.groups} must be at least 1 and divide its {inputs} inputs"
            )
        self.outputs = inputs
        self.out_h, self.out_w, self.out_c = h, w, c
        self.temperature = f32(options.find_float("temperature", 1, quiet=True))
        if self.temperature == 0:
            raise DLServerError(f"{where}: softmax temperature must not be 0")
        tree_file = options.find_str("tree", None)
        self.tree = read_tree(tree_file, where) if tree_file is not None else None
        if self.tree is not None and self.tree.n > inputs:
            raise DLServerError(
                f"{where}: tree={tree_file} has {self.tree.n} classes, more than the {inputs} inputs"
            )
        self.spatial = options.find_float("spatial", 0, quiet=True)
        self.noloss = options.find_int("noloss", 0, quiet=True)
        if self.spatial:
            raise DLServerError(f"{where}: softmax supports only spatial=0")
        self.allocate()

    has_cost = True

    def forward(self, net, input_buf, train):
        if self.tree is not None:
            count = 0
            for size in self.tree.group_size:
                if size:
                    kernels.softmax_strided(
                        memoryview(input_buf)[count:],
                        size,
                        self.batch,
                        self.inputs,
                        1,
                        0,
                        1,
                        self.temperature,
                        memoryview(self.output)[count:],
                    )
                count += size
        elif self.groups == 1:
            kernels.softmax(input_buf, self.batch, self.inputs, self.temperature, self.output)
        else:
            n = self.inputs // self.groups
            kernels.softmax_strided(
                input_buf, n, self.batch, self.inputs, self.groups, n, 1, self.temperature, self.output
            )
        self.cost = 0.0
        if train and net.truth is not None and not self.noloss:
            # delta = t - y; cost = sum over t != 0 of -log(y)
            self.cost = kernels.softmax_cost(self.output, net.truth, self.delta, self.batch * self.inputs)

    def backward(self, net, input_buf, prev_delta):
        if prev_delta is not None:
            kernels.axpy(self.batch * self.inputs, 1.0, self.delta, prev_delta)

    def describe(self):
        return f"softmax                                        {self.inputs:4d}"
