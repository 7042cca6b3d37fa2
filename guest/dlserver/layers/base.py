"""What every layer has: geometry, its output buffer, and its cfg options."""
from ..buffers import zeros
from ..errors import DLServerError

ACTIVATIONS = {"linear": 0, "relu": 1, "leaky": 2, "logistic": 3}
# Darknet knows these too; dl-server does not implement them yet.
KNOWN_ACTIVATIONS = ("loggy", "elu", "selu", "relie", "plse", "hardtan", "lhtan", "ramp", "tanh", "stair")


def parse_activation(options, default: str = "logistic") -> int:
    """The kernel code of a section's `activation`, an error for one we do not have."""
    name = options.find_str("activation", default)
    if name in ACTIVATIONS:
        return ACTIVATIONS[name]
    known = "not supported by dl-server yet" if name in KNOWN_ACTIVATIONS else "unknown"
    raise DLServerError(f"{options.path}:{options.line}: activation '{name}' is {known}"
                        f" (use one of {', '.join(ACTIVATIONS)})")


class Layer:
    """Geometry (input h, w, c -> output out_h, out_w, out_c) and a batch of outputs."""

    kind = "layer"
    has_weights = False

    def __init__(self, batch: int, h: int, w: int, c: int, inputs: int):
        self.batch = batch
        self.h, self.w, self.c = h, w, c
        self.inputs = inputs
        self.out_h = self.out_w = self.out_c = 0
        self.outputs = 0
        self.output = None
        self.dontsave = self.dontload = 0

    def allocate(self) -> None:
        """(Re)allocate per-batch buffers for the current batch size."""
        self.output = zeros(self.batch * self.outputs)

    def set_batch(self, batch: int) -> None:
        self.batch = batch
        self.allocate()

    def forward(self, net, input_buf, train: bool) -> None:
        raise NotImplementedError

    def describe(self) -> str:
        """The rest of Darknet's layer-table line after the `%5d ` index."""
        raise NotImplementedError
