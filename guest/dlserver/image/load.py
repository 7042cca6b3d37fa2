"""load_image_color: read an image file into a 3-channel float image (docs/darknet-contract.md §5.2, §7.2)."""

from ..errors import DLServerError
from ..files import read_input_file
from ..limits import DecodeBudgetError
from .jpeg import decode_jpeg
from .ops import Image, pixels_to_image
from .png import decode_png

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def read_image_file(path: str) -> bytes:
    """The bytes of an image file, with one clear error line when it cannot be read."""
    return read_input_file(path, "image")


def decode_image(data: bytes, path: str) -> Image:
    """Decode PNG or JPEG bytes to a 3-channel image."""
    if data.startswith(PNG_SIGNATURE):
        try:
            width, height, comps, pixels = decode_png(data)
        except DecodeBudgetError as e:
            raise DLServerError(f"{path}: {e}") from None
        except DLServerError as e:
            raise DLServerError(f"{path}: bad PNG: {e}") from None
        return pixels_to_image(width, height, comps, pixels)
    if data.startswith(b"\xff\xd8"):
        try:
            width, height, comps, pixels = decode_jpeg(data)
        except DecodeBudgetError as e:
            raise DLServerError(f"{path}: {e}") from None
        except DLServerError as e:
            raise DLServerError(f"{path}: bad JPEG: {e}") from None
        return pixels_to_image(width, height, comps, pixels)
    if not data:
        raise DLServerError(f"{path}: cannot load image: empty file")
    raise DLServerError(f"{path}: cannot load image: not a PNG file nor a JPEG file")


def load_image_color(path: str) -> Image:
    """Load an image as 3 planes of byte/255."""
    return decode_image(read_image_file(path), path)
