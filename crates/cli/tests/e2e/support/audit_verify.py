#!/usr/bin/env python3
"""An independent verifier of drivesec audit trails, written from
docs/audit.md alone ("Directory", "Frame", "Record body", "Checkpoints and
anchors", "Verification"). It shares no code with the Rust verifier: the
tests run both on the same trails and require the same verdict.

Usage: audit_verify.py TRAIL_DIR DEVICE_CERT_PEM (or a PEM public key)
Prints the report as JSON; exit status 0 when intact, 1 when not, 2 on
usage errors. (Whether an unsigned trail is acceptable is the caller's
policy: see `nothing_signed`.)
"""

import base64
import binascii
import hashlib
import json
import math
import os
import re
import stat
import struct
import sys
import zlib

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

MAGIC = b"DSA1"
HEADER = 48
TRAILER = 4
MAX_BODY = 65536
U64_MAX = 2**64 - 1
MAX_BODY_DEPTH = 64
STATEMENT_FIELDS = {"kind", "seq", "hash", "time", "algorithm", "signature"}
HASH_HEX = re.compile(r"[0-9a-f]{64}")

KIND_ORDER = [
    "damaged-record",
    "missing-records",
    "out-of-order",
    "broken-link",
    "checkpoint-mismatch",
    "forged-checkpoint",
    "cut-tail",
    "misnamed-segment",
    "reported-by-device",
]


# ---- frames ---------------------------------------------------------------


def decode(buf, off):
    """("end",) | ("frame", seq, prev, body, hash, length) | ("bad", reason)"""
    rest = buf[off:]
    if not rest or all(b == 0 for b in rest):
        return ("end",)
    if len(rest) < HEADER + TRAILER:
        return ("bad", "truncated frame header")
    if rest[0:4] != MAGIC:
        return ("bad", "bad frame magic")
    (length,) = struct.unpack_from("<I", rest, 4)
    if length < 1 or length > MAX_BODY:
        return ("bad", "frame length out of range")
    total = HEADER + length + TRAILER
    if len(rest) < total:
        return ("bad", "truncated frame")
    (crc,) = struct.unpack_from("<I", rest, HEADER + length)
    if zlib.crc32(rest[: HEADER + length]) & 0xFFFFFFFF != crc:
        return ("bad", "frame checksum mismatch")
    (seq,) = struct.unpack_from("<Q", rest, 8)
    prev = bytes(rest[16:48])
    body = bytes(rest[HEADER : HEADER + length])
    digest = hashlib.sha256(rest[4 : HEADER + length]).digest()
    return ("frame", seq, prev, body, digest, total)


def resync(buf, off):
    """The smallest later offset where a valid frame starts, or None."""
    at = off + 1
    while True:
        i = buf.find(MAGIC, at)
        if i < 0:
            return None
        if decode(buf, i)[0] == "frame":
            return i
        at = i + 1


# ---- strict JSON ("JSON" in docs/audit.md) -----------------------------------


class Invalid(ValueError):
    """JSON the format does not allow."""


def _object(pairs):
    obj = {}
    for k, v in pairs:
        if k in obj:
            raise Invalid("duplicate key")
        obj[k] = v
    return obj


def _float(text):
    v = float(text)
    if math.isinf(v):
        raise Invalid("number beyond a double")
    return v


def _int(text):
    if text == "-0":
        # A minus sign makes a number that is not an unsigned integer.
        return -0.0
    v = int(text)
    try:
        float(v)
    except OverflowError:
        raise Invalid("number beyond a double") from None
    return v


def _constant(name):
    raise Invalid(name)


def strict_json(data, max_depth=None):
    """The JSON value in `data` (bytes), or Invalid: UTF-8 without a byte
    order mark, no key twice in any object, finite numbers, valid Unicode
    strings, and (when given) arrays and objects nested at most `max_depth`
    deep, the outermost counting 1."""
    try:
        text = data.decode("utf-8")
        value = json.loads(
            text,
            object_pairs_hook=_object,
            parse_float=_float,
            parse_int=_int,
            parse_constant=_constant,
        )
    except (UnicodeDecodeError, RecursionError, ValueError) as e:
        raise Invalid(str(e)) from None
    stack = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, (dict, list)):
            if max_depth is not None and depth > max_depth:
                raise Invalid("nested too deep")
            items = v.items() if isinstance(v, dict) else enumerate(v)
            for k, x in items:
                if isinstance(k, str):
                    stack.append((k, depth))
                stack.append((x, depth + 1))
        elif isinstance(v, str):
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                raise Invalid("a lone surrogate") from None
    return value


# ---- statements and records ---------------------------------------------------


def load_key(path):
    """The device key: from a PEM certificate (the first of a chain), or,
    for tests, a PEM public key."""
    with open(path, "rb") as f:
        pem = f.read()
    if b"-----BEGIN PUBLIC KEY-----" in pem:
        return serialization.load_pem_public_key(pem)
    return x509.load_pem_x509_certificate(pem).public_key()


def signature_ok(key, msg, sig):
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            if key.curve.name != "secp256r1":
                return False
            key.verify(sig, msg, ec.ECDSA(hashes.SHA256()))
        elif isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(sig, msg)
        else:
            return False
        return True
    except (InvalidSignature, ValueError):
        return False


def statement(text, want, key):
    """(seq, hash bytes) of a valid statement of kind `want`, else (None or
    its seq, None) for a forged or unreadable one."""
    try:
        cp = strict_json(text)
    except Invalid:
        return None, None
    if not isinstance(cp, dict) or set(cp) != STATEMENT_FIELDS:
        return None, None
    fields = {"kind": str, "seq": int, "hash": str, "time": str, "algorithm": str, "signature": str}
    for name, typ in fields.items():
        v = cp.get(name)
        if not isinstance(v, typ) or isinstance(v, bool):
            return None, None
    if cp["kind"] not in ("checkpoint", "anchor") or not 0 <= cp["seq"] <= U64_MAX:
        return None, None
    seq = cp["seq"]
    h = bytes.fromhex(cp["hash"]) if HASH_HEX.fullmatch(cp["hash"]) else None
    # Canonical base64 only: the standard alphabet, padded, unused bits zero.
    try:
        sig = base64.b64decode(cp["signature"], validate=True)
        if base64.b64encode(sig).decode("ascii") != cp["signature"]:
            sig = None
    except (binascii.Error, ValueError):
        sig = None
    if cp["kind"] != want or h is None or sig is None:
        return seq, None
    tag = "drivesec-audit-checkpoint/v1" if want == "checkpoint" else "drivesec-audit-anchor/v1"
    msg = f"{tag}\nseq={seq}\nhash={cp['hash']}\ntime={cp['time']}\n".encode()
    if not signature_ok(key, msg, sig):
        return seq, None
    return seq, h


def is_record(body):
    """The body parses as a record (docs/audit.md, "Record body")."""
    try:
        r = strict_json(body, MAX_BODY_DEPTH)
    except Invalid:
        return None
    if not isinstance(r, dict):
        return None
    if not isinstance(r.get("time"), str):
        return None
    if r.get("time_quality") not in ("synchronized", "unsynchronized", "unknown"):
        return None
    actor = r.get("actor")
    if not isinstance(actor, dict):
        return None
    if actor.get("kind") in ("user", "certificate"):
        if not isinstance(actor.get("id"), str):
            return None
    elif actor.get("kind") != "device" or actor.get("id") is not None:
        return None
    for opt in ("source", "target"):
        if opt in r and r[opt] is not None and not isinstance(r[opt], str):
            return None
    if not isinstance(r.get("action"), str):
        return None
    if r.get("outcome") not in ("success", "failure", "denied"):
        return None
    if "essential" in r and not isinstance(r["essential"], bool):
        return None
    return r


# ---- the verifier -------------------------------------------------------------


def list_segments(trail):
    segs, stray = [], []
    d = os.path.join(trail, "segments")
    if not os.path.isdir(d):
        return segs, stray
    for name in os.listdir(d):
        p = os.path.join(d, name)
        st = os.lstat(p)
        ok = (
            stat.S_ISREG(st.st_mode)
            and len(name) == 24
            and name.endswith(".seg")
            and all(c in "0123456789" for c in name[:20])
            and int(name[:20]) <= U64_MAX
        )
        if ok:
            segs.append((int(name[:20]), name, p))
        else:
            stray.append(name)
    segs.sort()
    stray.sort()
    return segs, stray


def verify(trail, key):
    problems = []

    def problem(seq, kind, file, offset=None, message=""):
        problems.append({"seq": seq, "kind": kind, "file": file, "offset": offset, "message": message})

    def read(name):
        p = os.path.join(trail, name)
        if not os.path.exists(p):
            return None
        with open(p, "rb") as f:
            return f.read()

    # 1. Statements.
    anchor = None
    text = read("anchor.json")
    if text is not None:
        seq, h = statement(text, "anchor", key)
        if h is None:
            problem(seq, "forged-checkpoint", "anchor.json")
        else:
            anchor = (seq, h)
    checkpoints = {}
    verified = 0
    log_max = None
    text = read("checkpoints.log")
    if text is not None:
        for line in text.split(b"\n"):
            if not line:
                continue
            seq, h = statement(line, "checkpoint", key)
            if h is None:
                problem(seq, "forged-checkpoint", "checkpoints.log")
                continue
            if seq in checkpoints and checkpoints[seq] != h:
                problem(seq, "forged-checkpoint", "checkpoints.log")
            checkpoints[seq] = h
            log_max = seq if log_max is None else max(log_max, seq)
            verified += 1
    latest = None
    text = read("checkpoint.json")
    if text is not None:
        seq, h = statement(text, "checkpoint", key)
        if h is None:
            problem(seq, "forged-checkpoint", "checkpoint.json")
        else:
            if log_max is not None and seq < log_max:
                problem(seq + 1, "cut-tail", "checkpoint.json")
            if seq in checkpoints and checkpoints[seq] != h:
                problem(seq, "forged-checkpoint", "checkpoint.json")
            checkpoints[seq] = h
            verified += 1
            latest = seq
    elif log_max is not None:
        problem(log_max, "cut-tail", "checkpoint.json")

    # 2. Segments.
    segs, stray = list_segments(trail)
    genesis = not segs or segs[0][0] == 1
    if anchor is not None and not genesis:
        expected, head = anchor[0] + 1, anchor[1]
    else:
        expected, head = 1, bytes(32)
    head_known = True
    first_seq = last_seq = None
    records = 0
    pending = None  # (file, offset)
    reports = []
    seen = {}

    def report_region(region, nxt):
        file, offset = region
        if nxt is not None and nxt <= expected:
            problem(nxt, "damaged-record", file, offset)
        else:
            problem(expected, "damaged-record", file, offset)

    for number, name, path in segs:
        file = "segments/" + name
        with open(path, "rb") as f:
            data = f.read()
        if decode(data, 0)[0] == "end" and number != expected:
            problem(min(expected, number), "misnamed-segment", file, 0)
        off = 0
        first_in_seg = True
        while off < len(data):
            d = decode(data, off)
            if d[0] == "end":
                break
            if d[0] == "bad":
                if pending is not None and pending[0] != file:
                    report_region(pending, None)
                    pending = None
                if pending is None:
                    pending = (file, off)
                head_known = False
                n = resync(data, off)
                if n is None:
                    break
                off = n
                continue
            _, seq, prev, body, digest, length = d
            if first_in_seg and seq != number:
                problem(min(seq, number), "misnamed-segment", file, 0)
            first_in_seg = False
            after_region = pending is not None
            if pending is not None:
                report_region(pending, seq)
                pending = None
            if seq > expected:
                if not after_region:
                    problem(expected, "missing-records", file, off)
            elif seq < expected:
                problem(seq, "out-of-order", file, off)
            elif head_known and prev != head:
                problem(max(seq - 1, 1), "broken-link", file, off)
            rec = is_record(body)
            if rec is None:
                problem(seq, "damaged-record", file, off)
            elif (
                rec["actor"].get("kind") == "device"
                and rec["action"] in ("audit.integrity-failed", "audit.trail-rewound")
            ):
                details = rec.get("details") if isinstance(rec.get("details"), dict) else {}
                fb = details.get("first_bad_seq")
                fb = fb if isinstance(fb, int) and not isinstance(fb, bool) and 0 <= fb <= U64_MAX else None
                reports.append({"seq": seq, "action": rec["action"], "first_bad_seq": fb})
            if seq in checkpoints:
                seen.setdefault(seq, []).append(digest)
            if anchor is not None and anchor[0] == seq and anchor[1] != digest:
                problem(seq, "checkpoint-mismatch", file, off)
            if first_seq is None:
                first_seq = seq
            last_seq = seq
            records += 1
            head = digest
            head_known = True
            expected = min(seq + 1, U64_MAX)
            off += length
    if pending is not None:
        report_region(pending, None)

    # 3. Checkpoints against records.
    prev_cp = anchor[0] if anchor is not None else 0
    for seq in sorted(checkpoints):
        hashes_seen = seen.get(seq)
        if hashes_seen is not None and checkpoints[seq] not in hashes_seen:
            explained = any(p["seq"] is not None and prev_cp < p["seq"] <= seq for p in problems)
            if not explained:
                problem(prev_cp + 1, "checkpoint-mismatch", "segments")
        prev_cp = seq

    # 4. Cut tail.
    end = expected - 1
    signed_seq = max(checkpoints) if checkpoints else None
    if signed_seq is not None and signed_seq > end:
        problem(end + 1, "cut-tail", "segments")

    # 5. The device's reports.
    for r in reports:
        problem(r["first_bad_seq"] if r["first_bad_seq"] is not None else r["seq"], "reported-by-device", "segments")

    # 6. Signed or not.
    covered = max(signed_seq or 0, anchor[0] if anchor else 0)
    unsigned = None
    if last_seq is not None and last_seq > covered:
        unsigned = {"first": max(first_seq, covered + 1), "last": last_seq}
    nothing_signed = records > 0 and unsigned is not None and unsigned["first"] == first_seq

    problems.sort(key=lambda p: (p["seq"] if p["seq"] is not None else 0, KIND_ORDER.index(p["kind"])))
    seqs = [p["seq"] for p in problems if p["seq"] is not None]
    return {
        "ok": not problems,
        "records": records,
        "first_seq": first_seq,
        "last_seq": last_seq,
        "checkpoints_verified": verified,
        "latest_checkpoint": latest,
        "signed_seq": signed_seq,
        "anchor": anchor[0] if anchor else None,
        "unsigned": unsigned,
        "nothing_signed": nothing_signed,
        "first_bad_seq": min(seqs) if seqs else None,
        "problems": problems,
        "stray_files": stray,
    }


def main(argv):
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    report = verify(argv[1], load_key(argv[2]))
    print(json.dumps(report, indent=1))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
