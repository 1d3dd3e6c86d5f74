"""Images in and out of the server: base64 (with or without a data-URL prefix) and uploaded files decoded with the
pixel count checked from the header before any pixel is decoded (no decompression bombs); PNG out."""

from __future__ import annotations

import base64
import binascii
import io
import warnings

import PIL.Image

from .errors import invalid

FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF")


def decode_base64(field: str, text: object, max_pixels: int) -> PIL.Image.Image:
    if not isinstance(text, str) or not text:
        raise invalid(field, f"{field} is not a base64 image; accepted: a base64 string of a PNG, JPEG or WebP file")
    if text.startswith("data:"):
        head, _, text = text.partition(",")
        if ";base64" not in head:
            raise invalid(field, f"{field} is a data URL without ';base64'; accepted: data:image/png;base64,...")
    try:
        data = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise invalid(
            field, f"{field} is not valid base64; accepted: a base64 string of a PNG, JPEG or WebP file"
        ) from None
    return decode_bytes(field, data, max_pixels)


def decode_bytes(field: str, data: bytes, max_pixels: int) -> PIL.Image.Image:
    """An image file's bytes as a loaded PIL image, refused before decoding when its header declares more than
    ``max_pixels`` pixels."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", PIL.Image.DecompressionBombWarning)
            image = PIL.Image.open(io.BytesIO(data), formats=FORMATS)
            width, height = image.size
            if width * height > max_pixels:
                raise invalid(
                    field,
                    f"{field} is {width}x{height} ({width * height} pixels), more than the {max_pixels} this server "
                    "decodes; accepted: a smaller image",
                )
            image.load()
    except PIL.Image.DecompressionBombError:
        raise invalid(
            field, f"{field} declares more pixels than this server decodes; accepted: a smaller image"
        ) from None
    except (PIL.UnidentifiedImageError, OSError, SyntaxError, ValueError, PIL.Image.DecompressionBombWarning) as error:
        if isinstance(error, PIL.Image.DecompressionBombWarning):
            message = f"{field} declares more pixels than this server decodes; accepted: a smaller image"
        else:
            message = f"{field} is not a readable image ({type(error).__name__}); accepted: a PNG, JPEG or WebP file"
        raise invalid(field, message) from None
    return image


def encode_png(image: PIL.Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def png_base64(image: PIL.Image.Image) -> str:
    return base64.b64encode(encode_png(image)).decode("ascii")
