"""Secure aggregation overhead per round against plain aggregation (globai/protocol/secagg.py), in one process.

    python bench/secagg.py                  # W = 3 and 8, one dropout, the tiny training model and a 10M vector
    python bench/secagg.py --params 1000000 --workers 3

Per round and per worker: bytes sent (keys + sealed shares + masked input + unmask shares vs the plain fp32 and
int8 updates) and CPU seconds (key generation, Shamir sharing and sealing, masking vs encoding the plain update);
for the market: unmasking the sum with one dropped participant vs summing plain fp32 updates.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from globai.protocol import secagg
from globai.protocol.compression import encode_update, parse_codec


def _timed(fn):  # type: ignore[no-untyped-def]
    t0 = time.process_time()
    out = fn()
    return out, time.process_time() - t0


def measure(n: int, w: int) -> dict[str, float]:
    ctx = secagg.round_context(31337, "0x" + "00" * 32, 0, "ab" * 32)
    t = secagg.threshold(w)
    bound, scale = 1.0, secagg.fixed_point_scale(1.0, w)
    xs = [torch.randn(n, dtype=torch.float64) * 1e-3 for _ in range(w)]
    parts, t_keys = _timed(lambda: [secagg.Participant.new(i, ctx) for i in range(w)])
    c_pub = {p.slot: p.c.public for p in parts}
    s_pub = {p.slot: p.s.public for p in parts}
    sealed, t_share = _timed(lambda: {p.slot: p.shares_for(c_pub, t) for p in parts})
    survivors = parts[:-1]  # the last one drops after sharing

    def mask_all() -> dict[int, torch.Tensor]:
        return {p.slot: p.mask(secagg.encode(xs[p.slot], scale, bound), s_pub) for p in survivors}

    ys, t_mask = _timed(mask_all)
    wire = {u: secagg.encode_masked(y) for u, y in ys.items()}
    opened = {v.slot: {u: v.open_share(u, c_pub[u], sealed[u][v.slot]) for u in range(w)} for v in survivors}
    b = {u.slot: secagg.combine([opened[v][u.slot][1] for v in opened][:t]) for u in survivors}
    s_dropped = secagg.combine([opened[v][w - 1][0] for v in opened][:t])
    decoded = {u: secagg.decode_masked(data, n) for u, data in wire.items()}
    total, t_unmask = _timed(lambda: secagg.unmask_sum(decoded, s_pub, b, {w - 1: s_dropped}, ctx))
    err = float((secagg.decode_sum(total, scale) - sum(xs[:-1])).abs().max())
    plain = {"u": xs[0].to(torch.float32)}
    fp32 = len(encode_update(plain, parse_codec("none")))
    int8 = len(encode_update(plain, parse_codec("int8")))
    _, t_plain_sum = _timed(lambda: torch.stack([x.to(torch.float32) for x in xs[:-1]]).sum(0))
    _, t_plain_enc = _timed(lambda: encode_update(plain, parse_codec("int8")))
    keys_bytes = 2 * 32 + 65
    share_bytes = sum(len(v) for v in sealed[0].values())
    unmask_bytes = (len(survivors) + 1) * (2 + 66)
    return {
        "n": n,
        "w": w,
        "masked_bytes": len(wire[0]),
        "fp32_bytes": fp32,
        "int8_bytes": int8,
        "protocol_bytes": keys_bytes + share_bytes + unmask_bytes,
        "worker_cpu_s": (t_keys + t_share + t_mask) / w,
        "worker_mask_s": t_mask / len(survivors),
        "plain_encode_s": t_plain_enc,
        "unmask_s": t_unmask,
        "plain_sum_s": t_plain_sum,
        "max_err": err,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=int, nargs="*", default=[115_008, 10_000_000])
    parser.add_argument("--workers", type=int, nargs="*", default=[3, 8])
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"load at start: {os.getloadavg()[0]:.2f}")
    print(
        "| params | W | masked input | plain fp32 / int8 | keys+shares+unmask | worker CPU (mask) | plain int8 encode"
        " | market unmask (1 dropped) | plain sum | max error |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for n in args.params:
        for w in args.workers:
            r = measure(n, w)
            print(
                f"| {n:,} | {w} | {r['masked_bytes'] / 1e6:.2f} MB | {r['fp32_bytes'] / 1e6:.2f} / "
                f"{r['int8_bytes'] / 1e6:.2f} MB | {r['protocol_bytes'] / 1e3:.1f} kB | {r['worker_cpu_s']:.2f} s "
                f"({r['worker_mask_s']:.2f} s) | {r['plain_encode_s']:.3f} s | {r['unmask_s']:.2f} s | "
                f"{r['plain_sum_s']:.3f} s | {r['max_err']:.1e} |"
            )
    print(f"load at end: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
