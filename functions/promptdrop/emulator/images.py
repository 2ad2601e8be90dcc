"""Draw the emulator's images: a gradient with the prompt written on it, encoded as PNG or JPEG.

The same (prompt, seed, size, format) always gives the same bytes, so tests can compare outputs.
Speed matters more than beauty: PNG uses ``compress_level=1``.
"""

from __future__ import annotations

import hashlib
import io
import textwrap
from functools import lru_cache
from typing import Final

from PIL import Image, ImageDraw, ImageFont

# imageSize class -> long side in pixels.
LONG_SIDE: Final = {"512": 512, "1K": 1024, "2K": 2048, "4K": 4096}
MIN_SIDE: Final = 16
MIME_TYPES: Final = {"PNG": "image/png", "JPEG": "image/jpeg"}
# Text this small (images under 168 px on their short side) gets a shadow instead of a stroked outline.
STROKE_FROM_FONT_SIZE: Final = 12


def parse_aspect_ratio(text: str) -> tuple[int, int]:
    """``"16:9"`` -> ``(16, 9)``; raise ValueError unless both sides are positive integers."""
    width, sep, height = text.partition(":")
    if not sep or not width.isdigit() or not height.isdigit() or int(width) == 0 or int(height) == 0:
        raise ValueError(f"aspect ratio must read W:H with positive integers, got {text!r}")
    return int(width), int(height)


def image_dimensions(aspect_ratio: str, image_size: str, scale: float = 1.0) -> tuple[int, int]:
    """Pixel width and height: the size class sets the long side (times ``scale``), the ratio the other.

    Each side is at least ``MIN_SIDE`` pixels. Raises ValueError for an unknown size class or ratio.
    """
    if image_size not in LONG_SIDE:
        raise ValueError(f"image size must be one of {', '.join(LONG_SIDE)}, got {image_size!r}")
    ratio_w, ratio_h = parse_aspect_ratio(aspect_ratio)
    long_side = LONG_SIDE[image_size] * scale
    if ratio_w >= ratio_h:
        width, height = long_side, long_side * ratio_h / ratio_w
    else:
        width, height = long_side * ratio_w / ratio_h, long_side
    return max(MIN_SIDE, round(width)), max(MIN_SIDE, round(height))


@lru_cache(maxsize=32)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size)


def _colours(prompt: str, seed: int) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    digest = hashlib.sha256(f"{seed}\0{prompt}".encode()).digest()
    return (digest[0], digest[1], digest[2]), (digest[3], digest[4], digest[5])


def _gradient(width: int, height: int, start: tuple[int, int, int], end: tuple[int, int, int]) -> Image.Image:
    """A top-to-bottom gradient from ``start`` to ``end``: one column computed, then stretched sideways.

    ``ImageOps.colorize`` of a resized grey ramp drew the same picture at three times the cost (a 768-entry
    lookup table built in Python, a bicubic resize), a third of a small image's time.
    """
    last = max(1, height - 1)
    column = bytes(
        round(a + (b - a) * row / last) for row in range(height) for a, b in zip(start, end, strict=True)
    )
    return Image.frombytes("RGB", (1, height), column).resize((width, height), Image.Resampling.NEAREST)


def render_image(prompt: str, seed: int, width: int, height: int, image_format: str = "PNG") -> bytes:
    """Encoded image bytes of ``width`` x ``height`` showing ``prompt`` on a seeded gradient."""
    start, end = _colours(prompt, seed)
    image = _gradient(width, height, start, end)
    font_size = max(6, min(width, height) // 14)
    font = _font(font_size)
    margin = max(2, font_size // 2)
    columns = max(4, int((width - 2 * margin) / (font_size * 0.6)))
    rows = max(1, (height - 2 * margin) // (font_size + 4))
    text = "\n".join(textwrap.wrap(prompt, columns)[:rows] or [""])
    if font_size < STROKE_FROM_FONT_SIZE:
        # White text over a dark shadow one pixel down and right, both from one plain render of the text:
        # an eighth of the cost of a stroked render, which was half of a small image's time.
        mask = Image.new("L", (width, height))
        ImageDraw.Draw(mask).multiline_text((margin, margin), text, font=font, fill=255, spacing=4)
        image.paste((0, 0, 0), (1, 1), mask)
        image.paste((255, 255, 255), (0, 0), mask)
    else:
        ImageDraw.Draw(image).multiline_text(
            (margin, margin),
            text,
            font=font,
            fill=(255, 255, 255),
            stroke_width=max(1, font_size // 12),
            stroke_fill=(0, 0, 0),
            spacing=4,
        )
    buffer = io.BytesIO()
    if image_format == "JPEG":
        image.save(buffer, "JPEG", quality=85)
    else:
        image.save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()
