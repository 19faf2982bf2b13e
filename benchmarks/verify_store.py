"""Cost of store verification against plain reading, on a store of analytic ring images.

Writes a temporary store of ``--num`` lenses (3 bands, ``--size``² pixels, chunks of 256;
noisy images, so zstd cannot shrink them much) and prints one JSON line of best-of-3
seconds: ``verify_quick`` (flags + chunk-file listing), ``verify_full`` (every chunk
read and CRC-32 checked), ``read`` and ``read_verified`` (all chunks through
``read_chunk``), each also extrapolated to 60,000 lenses. Example:

    python benchmarks/verify_store.py --num 4096
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path


def _best_of(function, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num", type=int, default=4096)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from conftest import write_ring_store

    with tempfile.TemporaryDirectory() as folder:
        store = write_ring_store(
            Path(folder) / "r.zarr", num=args.num, chunk_size=256, size=args.size
        )
        chunks = range(store.num_chunks)
        seconds = {
            "verify_quick": _best_of(lambda: store.verify(full=False)),
            "verify_full": _best_of(lambda: store.verify(full=True)),
            "read": _best_of(lambda: [store.read_chunk(k, verify=False) for k in chunks]),
            "read_verified": _best_of(lambda: [store.read_chunk(k) for k in chunks]),
        }
    scale = 60_000 / args.num
    print(
        json.dumps(
            {
                "num": args.num,
                "seconds": {k: round(v, 4) for k, v in seconds.items()},
                "seconds_at_60000": {k: round(v * scale, 2) for k, v in seconds.items()},
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
