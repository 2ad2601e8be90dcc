"""Thumbnails: any image the API returns -> a small WebP; bad bytes -> a typed error, never a crash."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from promptdrop.thumbnails import MAX_SIDE, ThumbnailError, is_own_thumbnail, make_thumbnail


def _encoded(size: tuple[int, int], fmt: str, mode: str = "RGB") -> bytes:
    out = io.BytesIO()
    # Half-transparent where there is alpha: WebP drops an alpha channel that is opaque everywhere.
    colour = {"P": 3, "RGBA": (200, 0, 0, 128), "LA": (90, 128)}.get(mode, "red")
    Image.new(mode, size, colour).save(out, format=fmt)
    return out.getvalue()


@pytest.mark.parametrize(
    ("size", "fmt", "mode", "expected"),
    [
        ((4096, 1756), "PNG", "RGB", (256, 110)),  # 4K 21:9
        ((1536, 2048), "JPEG", "RGB", (192, 256)),  # 2K 3:4, decoded at reduced scale
        ((1024, 1024), "WEBP", "RGBA", (256, 256)),
        ((1024, 576), "PNG", "P", (256, 144)),  # palette images become RGB
        ((1024, 1024), "PNG", "LA", (256, 256)),  # grey with alpha keeps its alpha
        ((100, 40), "PNG", "RGB", (100, 40)),  # never enlarged
    ],
)
def test_thumbnail_is_a_small_webp_with_the_same_aspect_ratio(
    size: tuple[int, int], fmt: str, mode: str, expected: tuple[int, int]
) -> None:
    """The long side is at most MAX_SIDE, the ratio is kept, the result is WebP."""
    small = make_thumbnail(_encoded(size, fmt, mode))
    with Image.open(io.BytesIO(small)) as image:
        assert image.format == "WEBP"
        assert image.size == expected
        assert max(image.size) <= MAX_SIDE
        if mode in ("RGBA", "LA"):
            assert image.mode == "RGBA"


@pytest.mark.parametrize("data", [b"", b"not an image", _encoded((64, 64), "PNG")[:60]])
def test_unreadable_bytes_raise_a_typed_error(data: bytes) -> None:
    """Truncated or foreign bytes give ThumbnailError (the card then shows the full image)."""
    with pytest.raises(ThumbnailError):
        make_thumbnail(data)


def test_oversized_images_are_refused_before_decoding() -> None:
    """A header claiming more pixels than any size class is refused without allocating them."""
    out = io.BytesIO()
    Image.new("1", (10_000, 8_000)).save(out, format="PNG")
    with pytest.raises(ThumbnailError, match="too large"):
        make_thumbnail(out.getvalue())


@pytest.mark.parametrize(
    ("size", "fmt", "own"),
    [
        ((64, 36), "PNG", True),  # the emulator's 1K image at 1/16 scale
        ((255, 100), "JPEG", True),
        ((100, 100), "WEBP", True),
        ((256, 144), "PNG", False),  # as large as the box: the WebP is still lighter
        ((1024, 1024), "PNG", False),
        ((64, 64), "BMP", False),  # a format browsers need not show
    ],
)
def test_an_image_smaller_than_the_box_in_a_browser_format_is_its_own_thumbnail(
    size: tuple[int, int], fmt: str, own: bool
) -> None:
    """Nothing to decode or encode for an image the page can show as it is."""
    assert is_own_thumbnail(_encoded(size, fmt)) is own


def test_unreadable_bytes_are_not_their_own_thumbnail() -> None:
    """make_thumbnail then says why (ThumbnailError) and the card shows the full image."""
    assert is_own_thumbnail(b"not an image") is False
