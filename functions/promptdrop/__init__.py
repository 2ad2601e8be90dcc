"""promptdrop: turn prompt files into images at half price with the Gemini Batch API."""

__version__ = "0.1.0"
