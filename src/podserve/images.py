"""Decode an untrusted encoded image into pixels, refusing oversized images and decompression bombs."""

from __future__ import annotations

import io

from PIL import Image

from podserve.errors import InvalidInput

#: Formats a caller may send; anything else is refused before a decoder runs.
ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")


def decode_image(data: bytes, *, max_pixels: int, mode: str = "RGB",
                 draft_size: tuple[int, int] | None = None, field: str = "image") -> Image.Image:
    """Return the decoded image in `mode`, or raise InvalidInput naming `field` and the fix.

    The header is read first and the pixel count checked before any pixel is decoded, so a
    small file that claims 100k x 100k pixels costs nothing. `draft_size` lets JPEG decode
    at a reduced scale that still covers that size (much faster for big photos).
    """
    if not data:
        raise InvalidInput(f"'{field}' is empty; send the bytes of a JPEG, PNG, WebP, BMP, GIF or TIFF image",
                           field=field)
    try:
        image = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
        width, height = image.size
        # Pillow only warns between its bomb threshold and twice it; a server refuses. (Checked here rather than
        # with warnings.catch_warnings(), which is neither thread-safe nor free.)
        if Image.MAX_IMAGE_PIXELS and width * height > Image.MAX_IMAGE_PIXELS:
            raise Image.DecompressionBombError(f"{width}x{height} = {width * height} pixels is over Pillow's "
                                               f"decompression bomb threshold of {Image.MAX_IMAGE_PIXELS}")
        if width * height > max_pixels:
            raise InvalidInput(f"'{field}' is {width}x{height} = {width * height} pixels, over the limit of "
                               f"{max_pixels}; send a smaller image", field=field)
        if draft_size is not None and image.format == "JPEG":
            image.draft(mode, draft_size)
        image.load()
        return image if image.mode == mode else image.convert(mode)
    except InvalidInput:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:  # the warning where errors
        raise InvalidInput(f"'{field}' looks like a decompression bomb ({exc}); send a smaller image",
                           field=field) from None
    except Image.UnidentifiedImageError:
        video = _video_container(data)
        if video:
            raise InvalidInput(f"'{field}' holds a video ({video}), not an image; send it as 'video', or raw with a "
                               f"video/* Content-Type", field=field) from None
        raise InvalidInput(f"'{field}' is not an image in a format this server reads ({', '.join(ACCEPTED_FORMATS)}); "
                           f"its first bytes are {data[:8]!r}", field=field) from None
    except Exception as exc:  # noqa: BLE001 - not only Pillow's documented OSError, ValueError, SyntaxError, EOFError
        # and MemoryError: its plugins raise others on some malformed files (TypeError from a TIFF whose strip offsets
        # are typed RATIONAL), and whatever the bytes make it raise is the caller's bad image, never a 500
        raise InvalidInput(f"'{field}' could not be decoded ({type(exc).__name__}: {exc}); send a complete, valid "
                           f"image", field=field) from None


def _video_container(data: bytes) -> str | None:
    """The video container `data` starts like (MP4/MOV, WebM/MKV, AVI), or None."""
    if data[4:8] == b"ftyp":
        return "MP4/MOV"
    if data[:4] == b"\x1a\x45\xdf\xa3":
        return "WebM/MKV"
    if data[:4] == b"RIFF" and data[8:12] == b"AVI ":
        return "AVI"
    return None
