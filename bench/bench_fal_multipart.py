"""Big uploads: a 300 MiB file through our multipart path (10 MiB parts, 4 at once, each
retried on its own) to the loopback emulator, which reassembles it; checks the result is
byte-identical (sha256) and prints throughput. Baseline in the same run: the official
fal-client's ``upload_file`` (10 parts at once) of the same file to the same emulator.

    python bench/bench_fal_multipart.py [--mib 300]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import tempfile
import time
from pathlib import Path

MiB = 1024 * 1024


def write_random(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    with path.open("wb") as f:
        left = size
        while left:
            chunk = os.urandom(min(16 * MiB, left))
            digest.update(chunk)
            f.write(chunk)
            left -= len(chunk)
    return digest.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=300)
    args, _ = parser.parse_known_args()  # bench.sh passes its arguments to every bench

    from sam_backend.backends.fal import FalConfig
    from sam_backend.backends.fal.client import FalClient
    from sam_backend.backends.fal.uploads import FalStorage
    from sam_backend.emulator import EmulatorServer

    with tempfile.TemporaryDirectory(prefix="sam31-bench-") as tmp:
        path = Path(tmp) / "big.mp4"
        size = args.mib * MiB + 4321  # not a whole number of parts
        t = time.perf_counter()
        digest = write_random(path, size)
        print(f"file: {size / MiB:.1f} MiB of random bytes, written in {time.perf_counter() - t:.1f} s")
        with EmulatorServer() as emu:
            config = FalConfig(key=emu.key, queue_url=emu.queue_url, rest_url=emu.rest_url, cdn_url=emu.cdn_url)
            with FalClient(config) as client:
                t = time.perf_counter()
                url = FalStorage(client).upload(path)
                ours = time.perf_counter() - t
            stored = emu.stored_file(url)
            assert stored is not None
            identical = stored.size == size and stored.sha256() == digest
            parts = emu.stats.multipart_parts
            print(f"ours:       {ours:5.1f} s, {size / MiB / ours:6.1f} MiB/s, {parts} parts, "
                  f"reassembled byte-identical: {identical}")
            assert identical, "the emulator's copy differs from the file"
            try:
                import fal_client
                import fal_client.client as fal_module
            except ImportError:
                print("fal-client not installed: no baseline")
                return
            for name, value in emu.fal_client_globals().items():
                setattr(fal_module, name, value)
            t = time.perf_counter()
            theirs_url = fal_client.SyncClient(key=emu.key).upload_file(path)
            theirs = time.perf_counter() - t
            same = emu.stored_file(theirs_url).sha256() == digest
            print(f"fal-client: {theirs:5.1f} s, {size / MiB / theirs:6.1f} MiB/s, byte-identical: {same}")
            print(f"ours vs fal-client: {theirs / ours:.2f}x")


if __name__ == "__main__":
    main()
