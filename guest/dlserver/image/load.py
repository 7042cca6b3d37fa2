"""load_image_color: read an image file into a 3-channel float image (spec §5.2, §7.2)."""
import os
from ..errors import DLServerError
from .ops import Image, pixels_to_image, resize_image
from .png import decode_png

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
READ_SIZE = 1 << 20


def read_image_file(path: str) -> bytes:
    """The bytes of an image file, with one clear error line when it cannot be read."""
    # os.open + one os.read: each WASI read costs ~45 us under wasmtime, and 60000 files add up.
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            data = os.read(fd, READ_SIZE)
            if len(data) == READ_SIZE:  # a short read of a regular file is its end
                chunks = [data]
                while chunk := os.read(fd, READ_SIZE):
                    chunks.append(chunk)
                data = b"".join(chunks)
        finally:
            os.close(fd)
        return data
    except FileNotFoundError:
        raise DLServerError(f"{path}: cannot load image: no such file") from None
    except IsADirectoryError:
        raise DLServerError(f"{path}: cannot load image: it is a directory") from None
    except OSError as e:
        raise DLServerError(f"{path}: cannot load image: {e.strerror or e}") from None


def decode_image(data: bytes, path: str) -> Image:
    """Decode PNG (and, later, JPEG) bytes to a 3-channel image."""
    if data.startswith(PNG_SIGNATURE):
        try:
            width, height, comps, pixels = decode_png(data)
        except DLServerError as e:
            raise DLServerError(f"{path}: bad PNG: {e}") from None
        return pixels_to_image(width, height, comps, pixels)
    if data.startswith(b"\xff\xd8"):
        raise DLServerError(f"{path}: JPEG images are not supported yet")
    if not data:
        raise DLServerError(f"{path}: cannot load image: empty file")
    raise DLServerError(f"{path}: cannot load image: not a PNG file")


def load_image_color(path: str, w: int = 0, h: int = 0) -> Image:
    """Load an image as 3 planes of byte/255, resized to w x h when both are given."""
    im = decode_image(read_image_file(path), path)
    if w and h and (im.w != w or im.h != h):
        return resize_image(im, w, h)
    return im
