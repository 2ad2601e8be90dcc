"""``python -m promptdrop.emulator [--host H] [--port N] [--data-dir DIR] [controls]``."""

from promptdrop.emulator.command import main

raise SystemExit(main())
