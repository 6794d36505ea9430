#!/usr/bin/env python3
"""Asks QEMU's emulated NSM (virtio-nsm) for an attestation document without a guest.

Starts the QEMU built by scripts/nitro-sim/qemu.sh with the qtest accelerator on the
`microvm` machine (which the nitro-only build includes) and a virtio-nsm-device, drives the
device's virtio-mmio queue from this script (as the Linux nsm driver does: one request buffer,
one 0x3000-byte response buffer), and writes the raw COSE_Sign1 document to a file.

Before the Attestation request it extends PCR0, PCR1 and PCR2 once each (with the bytes
"pcr0", "pcr1", "pcr2") and locks PCRs 0-15, so the document carries 16 PCRs like one
from the nitro-enclave machine. No vsock, no kernel, no EIF; takes well under a second.

With --nitro SOCKET it uses the nitro-enclave machine itself (no kernel; the NSM's PCRs 0-15
are then locked at reset, PCR3/PCR4 from --parent-role/--parent-id), which needs a running
vhost-user vsock backend on SOCKET (vhost-device-vsock --socket SOCKET --uds-path ...), and
sets the signing properties with -global as a real run would.

Usage:
  nsm-qtest.py QEMU OUT.cbor [--pki DIR | --unsigned] [--module-id ID]
               [--nonce TEXT] [--user-data TEXT] [--public-key TEXT]
               [--nitro SOCKET [--parent-role R] [--parent-id I]] [--qemu-arg ARG]...
--pki defaults to attestation/testdata/test-pki of this repository (leaf.key.pk8.der,
leaf.der, root.der, intermediate.der). Prints a summary of the document on stdout.
Test tooling only; python3 standard library only.
"""

import argparse
import hashlib
import os
import struct
import subprocess
import sys

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
MMIO_BASE, MMIO_SIZE, MMIO_SLOTS = 0xFEB00000, 0x200, 32
VIRTIO_ID_NSM = 33
RESPONSE_SIZE = 0x3000
# Guest-physical scratch memory (microvm RAM starts at 0).
DESC, AVAIL, USED, REQ, RESP = 0x100000, 0x101000, 0x102000, 0x110000, 0x120000
QUEUE_SIZE = 4


# --- minimal CBOR (RFC 8949): what NSM requests and responses use ------------------------

def _head(major, n):
    if n < 24:
        return bytes([major << 5 | n])
    for ai, fmt in ((24, ">B"), (25, ">H"), (26, ">I"), (27, ">Q")):
        if n < 1 << (8 * struct.calcsize(fmt)):
            return bytes([major << 5 | ai]) + struct.pack(fmt, n)
    raise ValueError(n)


def enc(v):
    if v is None:
        return b"\xf6"
    if isinstance(v, bool):
        return b"\xf5" if v else b"\xf4"
    if isinstance(v, int):
        return _head(0, v) if v >= 0 else _head(1, -1 - v)
    if isinstance(v, bytes):
        return _head(2, len(v)) + v
    if isinstance(v, str):
        b = v.encode()
        return _head(3, len(b)) + b
    if isinstance(v, list):
        return _head(4, len(v)) + b"".join(enc(x) for x in v)
    if isinstance(v, dict):
        return _head(5, len(v)) + b"".join(enc(k) + enc(x) for k, x in v.items())
    raise TypeError(type(v))


def dec(b, i=0):
    """Returns (value, next index). Maps become lists of pairs (keys may be ints)."""
    ib = b[i]
    major, ai = ib >> 5, ib & 31
    i += 1
    if ai < 24:
        n = ai
    elif ai in (24, 25, 26, 27):
        size = 1 << (ai - 24)
        n = int.from_bytes(b[i:i + size], "big")
        i += size
    elif ai == 31:
        n = None  # indefinite
    else:
        raise ValueError(f"unsupported CBOR head {ib:#x}")
    if major == 0:
        return n, i
    if major == 1:
        return -1 - n, i
    if major in (2, 3):
        v = b[i:i + n]
        return (bytes(v) if major == 2 else v.decode()), i + n
    if major in (4, 5):
        items = []
        count = n if n is not None else 1 << 62
        while len(items) < count * (2 if major == 5 else 1):
            if n is None and b[i] == 0xFF:
                i += 1
                break
            v, i = dec(b, i)
            items.append(v)
        if major == 4:
            return items, i
        return list(zip(items[0::2], items[1::2])), i
    if major == 6:
        v, i = dec(b, i)
        return ("tag", n, v), i
    if major == 7:
        return {20: False, 21: True, 22: None}[ai], i
    raise ValueError(major)


def dec_all(b):
    v, i = dec(b)
    if i != len(b):
        raise ValueError(f"{len(b) - i} trailing bytes")
    return v


# --- qtest ----------------------------------------------------------------------------------

class QTest:
    def __init__(self, argv):
        self.p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)

    def cmd(self, line):
        self.p.stdin.write(line + "\n")
        self.p.stdin.flush()
        while True:
            out = self.p.stdout.readline()
            if not out:
                err = self.p.stderr.read()
                raise SystemExit(f"nsm-qtest: QEMU exited: {err.strip()}")
            if out.startswith("IRQ"):
                continue
            if not out.startswith("OK"):
                raise SystemExit(f"nsm-qtest: qtest '{line}' -> {out.strip()}")
            return out[2:].strip()

    def readl(self, a):
        return int(self.cmd(f"readl {a:#x}"), 16)

    def writel(self, a, v):
        self.cmd(f"writel {a:#x} {v:#x}")

    def write(self, a, data):
        if data:
            self.cmd(f"write {a:#x} {len(data):#x} 0x{data.hex()}")

    def read(self, a, n):
        return bytes.fromhex(self.cmd(f"read {a:#x} {n:#x}")[2:])

    def close(self):
        self.p.stdin.close()
        self.p.terminate()  # qtest has no quit command; QEMU exits cleanly on SIGTERM
        try:
            self.p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()


class Nsm:
    """The virtio-nsm device on a virtio-mmio transport, driven like Linux's nsm driver."""

    def __init__(self, qt):
        self.qt = qt
        for slot in range(MMIO_SLOTS):
            base = MMIO_BASE + slot * MMIO_SIZE
            if qt.readl(base) == 0x74726976 and qt.readl(base + 8) == VIRTIO_ID_NSM:
                self.base = base
                break
        else:
            raise SystemExit("nsm-qtest: no virtio-nsm device on the virtio-mmio transports")
        self.version = qt.readl(self.base + 4)
        self.avail_idx = 0
        self.used_idx = 0
        self._init()

    def r(self, off):
        return self.qt.readl(self.base + off)

    def w(self, off, v):
        self.qt.writel(self.base + off, v)

    def _init(self):
        self.w(0x70, 0)                      # reset
        self.w(0x70, 1 | 2)                  # ACKNOWLEDGE | DRIVER
        if self.version == 1:                # legacy
            self.w(0x28, 4096)               # GuestPageSize
            self.w(0x30, 0)
            self.w(0x38, QUEUE_SIZE)
            self.w(0x3C, 4096)               # QueueAlign
            self.desc = DESC
            self.avail = DESC + 16 * QUEUE_SIZE
            self.used = (self.avail + 6 + 2 * QUEUE_SIZE + 4095) & ~4095
            self.w(0x40, DESC >> 12)         # QueuePFN
        else:
            self.w(0x24, 1)
            self.w(0x20, 1)                  # VIRTIO_F_VERSION_1 (bit 32)
            self.w(0x24, 0)
            self.w(0x20, 0)
            self.w(0x70, 1 | 2 | 8)          # FEATURES_OK
            if not self.r(0x70) & 8:
                raise SystemExit("nsm-qtest: device refused the features")
            self.desc, self.avail, self.used = DESC, AVAIL, USED
            self.w(0x30, 0)
            if self.r(0x34) < QUEUE_SIZE:
                raise SystemExit("nsm-qtest: queue too small")
            self.w(0x38, QUEUE_SIZE)
            for off, addr in ((0x80, self.desc), (0x90, self.avail), (0xA0, self.used)):
                self.w(off, addr & 0xFFFFFFFF)
                self.w(off + 4, addr >> 32)
            self.w(0x44, 1)                  # QueueReady
        self.w(0x70, 1 | 2 | 4 | (0 if self.version == 1 else 8))  # DRIVER_OK

    def request(self, req):
        body = enc(req)
        qt = self.qt
        qt.write(REQ, body)
        # desc[0]: request (device reads), desc[1]: response (device writes); two buffers.
        qt.write(self.desc, struct.pack("<QIHH", REQ, len(body), 0, 0)
                 + struct.pack("<QIHH", RESP, RESPONSE_SIZE, 2, 0))
        qt.write(self.avail + 4 + 2 * (self.avail_idx % QUEUE_SIZE), struct.pack("<H", 0))
        qt.write(self.avail + 4 + 2 * ((self.avail_idx + 1) % QUEUE_SIZE), struct.pack("<H", 1))
        self.avail_idx = (self.avail_idx + 2) & 0xFFFF
        qt.write(self.avail, struct.pack("<HH", 0, self.avail_idx))
        self.w(0x50, 0)                      # QueueNotify
        idx = struct.unpack("<H", qt.read(self.used + 2, 2))[0]
        if idx != (self.used_idx + 2) & 0xFFFF:
            raise SystemExit(f"nsm-qtest: device used {idx - self.used_idx} buffers, not 2 "
                             "(see QEMU's stderr)")
        slot = (self.used_idx + 1) % QUEUE_SIZE
        _, length = struct.unpack("<II", qt.read(self.used + 4 + 8 * slot, 8))
        self.used_idx = idx
        return dec_all(qt.read(RESP, length))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("qemu")
    ap.add_argument("out")
    ap.add_argument("--pki", default=os.path.join(REPO, "attestation/testdata/test-pki"))
    ap.add_argument("--unsigned", action="store_true", help="no signing properties")
    ap.add_argument("--module-id", default="i-0123456789abcdef0-enc0123456789abcdef")
    ap.add_argument("--nonce")
    ap.add_argument("--user-data")
    ap.add_argument("--public-key")
    ap.add_argument("--nitro", metavar="SOCKET",
                    help="use -M nitro-enclave with this vhost-user vsock socket")
    ap.add_argument("--parent-role")
    ap.add_argument("--parent-id")
    ap.add_argument("--qemu-arg", action="append", default=[],
                    help="extra QEMU argument (repeatable), e.g. --qemu-arg=-L "
                         "--qemu-arg=/usr/share/seabios")
    a = ap.parse_args()

    props = []
    if not a.unsigned:
        p = lambda f: os.path.join(a.pki, f)  # noqa: E731
        props = [f"signing-key={p('leaf.key.pk8.der')}", f"certificate={p('leaf.der')}",
                 f"cabundle={p('root.der')}:{p('intermediate.der')}"]
    common = ["-accel", "qtest", "-qtest", "stdio", "-display", "none"]
    if a.nitro:
        machine = f"nitro-enclave,vsock=c,id={a.module_id}"
        machine += f",parent-role={a.parent_role}" if a.parent_role else ""
        machine += f",parent-id={a.parent_id}" if a.parent_id else ""
        argv = [a.qemu, "-M", machine, *common, "-m", "512M", "-chardev",
                f"socket,id=c,path={a.nitro}"]
        for prop in props:
            argv += ["-global", f"virtio-nsm-device.{prop}"]
    else:
        argv = [a.qemu, "-M", "microvm", *common, "-nodefaults", "-m", "64M", "-device",
                ",".join([f"virtio-nsm-device,module-id={a.module_id}", *props])]
    qt = QTest(argv + a.qemu_arg)
    try:
        nsm = Nsm(qt)
        if not a.nitro:
            for i in range(3):
                resp = nsm.request({"ExtendPCR": {"index": i, "data": f"pcr{i}".encode()}})
                if resp[0][0] != "ExtendPCR":
                    raise SystemExit(f"nsm-qtest: ExtendPCR -> {resp}")
            resp = nsm.request({"LockPCRs": {"range": 16}})
            if resp != "LockPCRs":
                raise SystemExit(f"nsm-qtest: LockPCRs -> {resp}")
        fields = {}
        for k, v in (("nonce", a.nonce), ("user_data", a.user_data),
                     ("public_key", a.public_key)):
            if v is not None:
                fields[k] = v.encode()
        resp = nsm.request({"Attestation": fields})
    finally:
        qt.close()
    if not (isinstance(resp, list) and resp[0][0] == "Attestation"):
        raise SystemExit(f"nsm-qtest: Attestation -> {resp}")
    doc = dict(resp[0][1])["document"]
    with open(a.out, "wb") as f:
        f.write(doc)

    cose = dec_all(doc)
    protected, unprotected, payload, signature = cose
    fields = dict(dec_all(payload))
    print(f"document: {len(doc)} bytes, COSE_Sign1 "
          f"{'untagged' if isinstance(cose, list) else 'tagged'}, written to {a.out}")
    print(f"protected: {protected.hex()}  unprotected: {unprotected}  "
          f"signature: {len(signature)} bytes")
    print(f"payload keys: {list(fields)}")
    print(f"module_id={fields['module_id']} digest={fields['digest']} "
          f"timestamp={fields['timestamp']}")
    pcrs = dict(fields["pcrs"])
    print(f"pcrs: {len(pcrs)} (indexes {sorted(pcrs)})")
    for i in range(5 if a.nitro else 3):
        note = ""
        if not a.nitro:
            want = hashlib.sha384(bytes(48) + f"pcr{i}".encode()).digest()
            note = "(as extended)" if pcrs[i] == want else "(UNEXPECTED)"
        print(f"  PCR{i}={pcrs[i].hex()} {note}")
    print(f"certificate: {len(fields['certificate'])} bytes; cabundle: "
          f"{[len(c) for c in fields['cabundle']]} bytes")
    for k in ("public_key", "user_data", "nonce"):
        print(f"{k}: {fields[k]!r}")


if __name__ == "__main__":
    sys.exit(main())
