"""Training data for `classifier train` (spec §5.2, the Veracruz loader: no augmentation).

Each batch draws batch*subdivisions paths with rand() % N (with replacement), loads each
image as 3 planes of byte/255 (resized only if its size differs from the network's) and
a one-hot truth from the labels found in the path. Images are decoded once and kept as
8-bit pixels while they fit in the cache budget; past it they are read from disk again.
"""
import _dlk

from .buffers import view, zeros
from .errors import DLServerError
from .image.load import decode_image, read_image_file
from .image.png import decode_png
from .image.ops import pixels_to_image, resize_image

CACHE_BUDGET = 64 << 20


class TrainingData:
    """The train list with labels, and a cache of decoded images."""

    def __init__(self, paths: list[str], labels: list[str], classes: int, w: int, h: int,
                 cache_budget: int = CACHE_BUDGET):
        self.paths = paths
        self.labels = labels[:classes]
        self.classes = classes
        self.w, self.h = w, h
        self.cache: dict[int, tuple] = {}
        self.cache_budget = cache_budget
        self.cached_bytes = 0
        self.label_index = [self._label_of(p) for p in paths]

    def _label_of(self, path: str) -> int:
        matches = [j for j, label in enumerate(self.labels) if label in path]
        if len(matches) != 1:
            names = ", ".join(self.labels[j] for j in matches) if matches else "none"
            raise DLServerError(f"{path}: the path should contain exactly one of the {self.classes} labels"
                                f" (found {len(matches)}: {names})")
        return matches[0]

    def preload(self) -> None:
        """Decode every image now when they all fit in the cache: errors come before training."""
        if len(self.paths) * self.w * self.h * 3 > self.cache_budget:
            return
        for i in range(len(self.paths)):
            self._pixels(i)

    def _pixels(self, i: int) -> tuple:
        found = self.cache.get(i)
        if found is not None:
            return found
        path = self.paths[i]
        data = read_image_file(path)
        if data.startswith(b"\x89PNG"):
            try:
                decoded = decode_png(data)
            except DLServerError as e:
                raise DLServerError(f"{path}: bad PNG: {e}") from None
        else:
            im = decode_image(data, path)
            decoded = (im.w, im.h, None, im)
        size = decoded[0] * decoded[1] * (decoded[2] or 12)
        if self.cached_bytes + size <= self.cache_budget:
            self.cache[i] = decoded
            self.cached_bytes += size
        return decoded

    def load_into(self, i: int, out) -> None:
        """Image i as network input (3 x h x w floats) into the buffer view `out`."""
        width, height, comps, pixels = self._pixels(i)
        if comps is not None and width == self.w and height == self.h:
            _dlk.pixels_to_chw(pixels, width, height, comps, out)
            return
        im = pixels if comps is None else pixels_to_image(width, height, comps, pixels)
        out[:] = resize_image(im, self.w, self.h).data

    def load_batch(self, rng, n: int):
        """n random images (rand() % N each) and their one-hot truths."""
        count = len(self.paths)
        picks = [rng.rand() % count for _ in range(n)]
        inputs = self.w * self.h * 3
        x = zeros(n * inputs)
        y = zeros(n * self.classes)
        for row, i in enumerate(picks):
            self.load_into(i, view(x, row * inputs, inputs))
            y[row * self.classes + self.label_index[i]] = 1.0
        return x, y
