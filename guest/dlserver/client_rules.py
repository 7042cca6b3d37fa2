"""A federated client's side of the rules (`classifier train` flags):

- `-prox MU GLOBAL.weights` (FedProx, Li et al. 2020): before every SGD step the proximal
  term's gradient mu * (w - w_global) joins each weight and bias gradient. Darknet keeps the
  negative gradient summed over the B = batch * subdivisions images in the update arrays, so
  the term is added there as upd += f32(-mu * B) * (w - w_global) (kernels.prox_add), like
  Darknet's decay; the step then moves w by -lr * mu * (w - w_global) more. Batch-norm
  scales and the layers that are not convolutional, connected, deconvolutional or local
  have no proximal term. MU = 0 changes nothing.
- `-clip C` (client-side fixed clipping, Flower's fixedclipping_mod): the final weights file
  holds w0 + (w - w0) * f32(min(1, C / |w - w0|)) (dlserver.rules.clip_to), w0 the weights
  training started from; the epoch and backup files are not clipped.
"""

import math
import sys
from array import array

from . import kernels
from .errors import DLServerError
from .layers.base import WeightedLayer
from .rng import f32
from .rules import clip_norms, clip_to


def parse_mu(text: str) -> float:
    try:
        mu = float(text)
    except ValueError:
        mu = -1.0
    if not (math.isfinite(mu) and mu >= 0):
        raise DLServerError(f"-prox {text}: MU must be a number >= 0")
    return mu


class Proximal:
    """FedProx's anchors: the global model's biases and weights per trained layer."""

    def __init__(self, mu: float, net, global_net):
        self.mu = mu
        self.anchors = [
            (layer, g.biases, g.weights)
            for layer, g in zip(net.layers, global_net.layers)
            if isinstance(layer, WeightedLayer)
        ]

    def add_to_updates(self, net) -> None:
        """upd += f32(-mu * B) * (w - w_global) for every trained layer's biases and weights."""
        c = f32(-self.mu * (net.batch * net.subdivisions))
        for layer, biases, weights in self.anchors:
            kernels.prox_add(len(biases), c, layer.biases, biases, layer.bias_updates)
            kernels.prox_add(len(weights), c, layer.weights, weights, layer.weight_updates)


def parse_clip(text: str) -> float:
    try:
        clip = float(text)
    except ValueError:
        clip = -1.0
    if not (math.isfinite(clip) and clip > 0):
        raise DLServerError(f"-clip {text}: the clip norm must be a number > 0")
    return clip


def snapshot(net) -> list[array]:
    return [array("f", a) for layer in net.layers for a in layer.parameter_arrays()]


def clip_model(net, start: list[array], clip: float) -> None:
    """The update from `start` clipped to L2 norm `clip`, in the network's own arrays."""
    arrays = [a for layer in net.layers for a in layer.parameter_arrays()]
    norm = clip_norms([arrays], start)[0]
    clipped = clip_to(arrays, start, norm, clip)
    scale = clip / norm if clipped else 1.0
    sys.stdout.write(f"client clipping: update norm {norm:g}, clip {clip:g}, scaled by {scale:g}\n")
