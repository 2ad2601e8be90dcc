"""The bundled Gemini Batch API emulator: an HTTP server the unmodified google-genai SDK talks to.

Point the SDK at it with ``types.HttpOptions(base_url=url)``. See docs/EMULATOR.md for its controls.
"""

from promptdrop.emulator.command import main
from promptdrop.emulator.options import EmulatorOptions
from promptdrop.emulator.server import EmulatorServer

__all__ = ["EmulatorOptions", "EmulatorServer", "main"]
