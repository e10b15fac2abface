"""The Nexmark RESULT checksum (docs/nexmark.md, "The checksum") over the CSV
files another engine wrote, e.g. Flink SQL's filesystem sink
(`anchors/flink/nexmark.py --sink DIR`):

    python3 bench/nexmark_checksum.py DIR      ->  results=<rows> checksum=<16 hex>

Lines are first brought to flowstate's canonical form: CSV quotes removed
(no result field of q2, q3, q5, q7, q8 or q11 contains a comma or a quote)
and timestamps (`2023-11-14 22:13:20.123`, UTC) written as epoch ms. Hidden
files (in-progress) are skipped. Pure Python: about 1 s per 3 MB of rows.
"""
import datetime
import glob
import os
import re
import sys

M = (1 << 64) - 1
TS = re.compile(rb'(\d{4}-\d{2}-\d{2})[ T](\d{2}:\d{2}:\d{2})(\.\d+)?Z?')


def line_hash(line: bytes) -> int:
    h = 0xcbf29ce484222325
    for b in line:
        h = ((h ^ b) * 0x100000001b3) & M
    z = (h + 0x9e3779b97f4a7c15) & M
    z = ((z ^ (z >> 30)) * 0xbf58476d1ce4e5b9) & M
    z = ((z ^ (z >> 27)) * 0x94d049bb133111eb) & M
    return z ^ (z >> 31)


def epoch_ms(m: re.Match) -> bytes:
    day = datetime.datetime.fromisoformat((m.group(1) + b'T' + m.group(2)).decode())
    seconds = int(day.replace(tzinfo=datetime.timezone.utc).timestamp())
    frac = m.group(3) or b'.0'
    return str(seconds * 1000 + round(float(frac) * 1000)).encode()


def main() -> None:
    total = rows = 0
    for path in glob.glob(os.path.join(sys.argv[1], '**', '*'), recursive=True):
        if not os.path.isfile(path) or os.path.basename(path).startswith('.'):
            continue
        with open(path, 'rb') as f:
            for line in f:
                line = TS.sub(epoch_ms, line.rstrip(b'\r\n')).replace(b'"', b'')
                total = (total + line_hash(line)) & M
                rows += 1
    print(f"results={rows} checksum={total:016x}")


if __name__ == '__main__':
    main()
