"""The bundled Gemini Batch API emulator: an HTTP server the unmodified google-genai SDK talks to.

Point the SDK at it with ``types.HttpOptions(base_url=url)``. See docs/EMULATOR.md for its controls. The
package itself imports nothing: the CLI starts in a fraction of a second because it needs only the
launcher and the options (``promptdrop.emulator.server`` holds the server, ``.command`` its ``main``).
"""
