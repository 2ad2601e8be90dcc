"""``python -m promptdrop.emulator``: serve in the foreground until SIGTERM or SIGINT."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from promptdrop.emulator.launcher import remove_server_record, serving, write_server_record
from promptdrop.emulator.options import argument_parser, options_from_args
from promptdrop.emulator.server import EmulatorServer
from promptdrop.errors import ConfigurationError


def main(argv: list[str] | None = None) -> int:
    """Run the emulator; 0 after a clean stop, 1 if it could not start, 2 for bad flags."""
    parser = argument_parser()
    args = parser.parse_args(argv)
    try:
        options = options_from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    running = serving(Path(args.data_dir))
    if running is not None:
        # What the user wants is an emulator for this folder: there is one, say where.
        url, pid = running
        print(
            f"promptdrop emulator: already serving {Path(args.data_dir).resolve()} at {url} (pid {pid}); "
            "use that one, or start a second one on another folder with --data-dir",
            flush=True,
        )
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    server = EmulatorServer(Path(args.data_dir), options, host=args.host, port=args.port)
    try:
        server.start()
    except (ConfigurationError, OSError) as exc:
        print(f"promptdrop emulator: {exc} (a second one needs its own folder: --data-dir)", file=sys.stderr)
        return 1
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    try:
        write_server_record(server.data_dir, host=args.host, port=server.port, url=server.url)
        print(f"promptdrop emulator serving on {server.url} (data: {server.data_dir})", flush=True)
        # A timed wait lets the signal handlers run promptly in the main thread.
        while not stop.wait(0.5):
            if options.idle_seconds and server.idle_for >= options.idle_seconds:
                print(f"promptdrop emulator: idle for {options.idle_seconds:.0f} s; stopping", flush=True)
                break
    finally:
        remove_server_record(server.data_dir)
        server.stop()
    return 0
