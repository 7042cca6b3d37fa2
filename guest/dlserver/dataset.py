"""Training data for `classifier train` (docs/darknet-contract.md §5.2, the Veracruz loader: no augmentation).

Each batch draws batch*subdivisions paths with rand() % N (with replacement), loads each
image as 3 planes of byte/255 (resized only if its size differs from the network's) and
a one-hot truth from the labels found in the path.

Speed (a batch of 100 MNIST files must cost a few ms inside the component):
  - the files of a batch are read in one `kernels.read_files` call (stat, open, pread, close each:
    under wasmtime, a read on a fresh descriptor costs ~3x a pread, which opens no stream; the
    stat and the open name the file relative to its directory, opened once per batch, so the
    host resolves one path component, not the whole path, twice for the stat and once to open);
  - preload (a train list whose images all fit in the cache) reads PRELOAD_CHUNK files a call;
  - the file bytes are kept while they fit in the cache budget, so an image drawn again
    is not read again (a PNG of MNIST is ~270 bytes; its pixels would take 784);
  - `kernels.decode_png_rows` decodes the plain 8-bit PNGs of the network's size straight into
    the batch (png.c); any other file -- and any file it refuses -- goes through the
    Python decoders, which give the same pixels or the error message;
  - the batch buffers are reused: two pairs, used in turn (the caller trains on one batch
    while the next one is loaded).
"""

from . import kernels, limits
from .buffers import view, zeros
from .errors import DLServerError
from .files import read_input_file
from .image.load import decode_image, read_image_file
from .image.ops import center_crop_image, resize_image

CACHE_BUDGET = 64 << 20
CACHE_OVERHEAD = 64  # bytes of a cached entry besides the file (bytes object, dict slot)
PRELOAD_CHUNK = 512  # files read per C call by preload


class TrainingData:
    """The train list with labels, and a cache of the image files' bytes."""

    def __init__(
        self,
        paths: list[str],
        labels: list[str],
        classes: int,
        w: int,
        h: int,
        cache_budget: int = CACHE_BUDGET,
    ):
        self.paths = paths
        self.labels = labels[:classes]
        self.classes = classes
        self.w, self.h = w, h
        self.cache: dict[int, bytes] = {}
        self.cache_budget = cache_budget
        self.cached_bytes = 0
        self.label_index = [self._label_of(p) for p in paths]
        self._buffers: list = []
        self._turn = 0

    def _label_of(self, path: str) -> int:
        matches = [j for j, label in enumerate(self.labels) if label in path]
        if len(matches) != 1:
            names = ", ".join(self.labels[j] for j in matches) if matches else "none"
            raise DLServerError(
                f"{path}: the path should contain exactly one of the {self.classes} labels"
                f" (found {len(matches)}: {names})"
            )
        return matches[0]

    def preload(self) -> None:
        """Read and decode every image now when they all fit in the cache: errors come before training."""
        if len(self.paths) * self.w * self.h * 3 > self.cache_budget:
            return
        scratch = zeros(3 * self.w * self.h)
        paths = self.paths
        for start in range(0, len(paths), PRELOAD_CHUNK):
            chunk = range(start, min(start + PRELOAD_CHUNK, len(paths)))
            self._read_files(chunk)
            for i in chunk:
                self.load_into(i, scratch)

    def _read_files(self, indexes) -> dict[int, bytes]:
        """The files of these images in one C call, kept in the cache while the budget allows;
        {i: bytes} of those read (one that was not: _file reads it again, or says why not)."""
        paths, keep = self.paths, self._keep
        fresh = {}
        for i, data in zip(indexes, kernels.read_files([paths[i] for i in indexes], limits.MAX_FILE_BYTES)):
            if data is not None:
                fresh[i] = data
                keep(i, data)
        return fresh

    def _file(self, i: int) -> bytes:
        """The bytes of image file i (from the cache, or read and cached while the budget allows)."""
        data = self.cache.get(i)
        if data is not None:
            return data
        data = read_input_file(self.paths[i], "image")
        self._keep(i, data)
        return data

    def _keep(self, i: int, data: bytes) -> None:
        """Cache file i's bytes while the budget allows."""
        size = len(data) + CACHE_OVERHEAD
        if self.cached_bytes + size <= self.cache_budget:
            self.cache[i] = data
            self.cached_bytes += size

    def _decode_slow(self, i: int, data: bytes, out) -> None:
        """Any image file through the Python decoders, resized to the network's size."""
        im = decode_image(data, self.paths[i])
        out[:] = resize_image(im, self.w, self.h).data

    def load_into(self, i: int, out) -> None:
        """Image i as network input (3 x h x w floats) into the buffer view `out`."""
        data = self._file(i)
        if not kernels.decode_png_chw(data, self.w, self.h, out):
            self._decode_slow(i, data, out)

    def _batch_buffers(self, n: int):
        """The next of two (x, y) buffer pairs for n rows."""
        inputs = self.w * self.h * 3
        if not self._buffers or len(self._buffers[0][1]) != n * self.classes:
            self._buffers = [(zeros(n * inputs), zeros(n * self.classes)) for _ in range(2)]
        self._turn ^= 1
        return self._buffers[self._turn]

    def load_batch(self, rng, n: int):
        """n random images (rand() % N each) and their one-hot truths. The buffers returned
        are overwritten by the next-but-one call."""
        picks = rng.rand_below(n, len(self.paths))
        x, y = self._batch_buffers(n)
        cache = self.cache
        misses = [i for i in picks if i not in cache]
        fresh = self._read_files(misses) if misses else {}
        datas = []
        file = self._file
        try:
            for i in picks:
                data = cache.get(i)
                datas.append(data if data is not None else fresh[i] if i in fresh else file(i))
        except DLServerError:
            self._decode_rows(picks, datas, x)  # an earlier row's error comes first
            raise
        self._decode_rows(picks, datas, x)
        kernels.fill(len(y), 0.0, y)
        classes, label_index = self.classes, self.label_index
        for row, i in enumerate(picks):
            y[row * classes + label_index[i]] = 1.0
        return x, y

    def _decode_rows(self, picks, datas, x) -> None:
        """Rows 0.. of x from the files `datas` (of images `picks`)."""
        inputs = self.w * self.h * 3
        for row in kernels.decode_png_rows(datas, self.w, self.h, x):  # the rows png.c did not take
            self._decode_slow(picks[row], datas[row], view(x, row * inputs, inputs))


def load_valid_batch(paths: list[str], w: int, h: int, input_buf) -> None:
    """Each image centre-cropped and resized to w x h, as rows of input_buf (`classifier valid`).

    Plain 8-bit PNGs of that size (MNIST) are read and decoded in one C call for the whole
    batch; every other file, and every error, goes through the Python decoders."""
    size = 3 * w * h
    files = kernels.read_files(paths, limits.MAX_FILE_BYTES)
    if None in files:
        files = [data if data is not None else read_image_file(path) for data, path in zip(files, paths)]
    for r in kernels.decode_png_rows(files, w, h, input_buf):
        crop = center_crop_image(decode_image(files[r], paths[r]), w, h)
        input_buf[r * size : (r + 1) * size] = crop.data
