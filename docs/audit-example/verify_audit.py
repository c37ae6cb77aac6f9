#!/usr/bin/env python3
"""verify_audit.py DIR [VKEY]: an independent verifier of a signerd audit log directory,
written from docs/audit-log.md alone.

Checks every line's envelope, seq, the hash chain, segment chaining, the RFC 6962 tree head at
every audit.checkpoint, the checkpoint file, and (with VKEY and the `cryptography` package)
every checkpoint signature. Standard library only, except for the Ed25519 signature check.
Exits 1 at the first failure, naming file:line and seq.
"""
import base64, hashlib, json, os, re, sys

def fail(where, msg):
    sys.exit(f"FAIL {where}: {msg}")

def leaf_hash(line):
    return hashlib.sha256(b"\x00" + line).digest()

def node_hash(left, right):
    return hashlib.sha256(b"\x01" + left + right).digest()

class Frontier:
    """Roots of the maximal perfect subtrees of the tree so far, largest first."""
    def __init__(self):
        self.nodes, self.size = [], 0
    def push(self, h):
        height = 0
        while self.nodes and self.nodes[-1][0] == height:
            _, left = self.nodes.pop()
            h, height = node_hash(left, h), height + 1
        self.nodes.append((height, h))
        self.size += 1
    def root(self):
        if not self.nodes:
            return hashlib.sha256(b"").digest()
        acc = self.nodes[-1][1]
        for _, left in reversed(self.nodes[:-1]):
            acc = node_hash(left, acc)
        return acc

def key_id(name, pub):
    return hashlib.sha256(name.encode() + b"\n\x01" + pub).digest()[:4]

def parse_vkey(vkey):
    name, kid, b64 = vkey.strip().split("+", 2)
    raw = base64.b64decode(b64, validate=True)
    if len(raw) != 33 or raw[0] != 1 or key_id(name, raw[1:]).hex() != kid.lower():
        sys.exit("malformed verifier key")
    return name, raw[1:]

def parse_note(note, vkey):
    """Returns (origin, size, root) of a checkpoint note; checks the signature if vkey."""
    split = note.rfind("\n\n")
    if split < 0 or not note.endswith("\n"):
        raise ValueError("malformed note")
    text, sigs = note[:split + 1], note[split + 2:]
    lines = text[:-1].split("\n")
    if len(lines) < 3 or not re.fullmatch(r"0|[1-9][0-9]*", lines[1]):
        raise ValueError("malformed checkpoint text")
    origin, size, root = lines[0], int(lines[1]), base64.b64decode(lines[2], validate=True)
    if len(root) != 32:
        raise ValueError("root is not 32 bytes")
    if vkey:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
        name, pub = vkey
        good = False
        for line in sigs[:-1].split("\n"):
            if not line.startswith("\u2014 "):
                raise ValueError("malformed signature line")
            signer, b64 = line[2:].split(" ", 1)
            raw = base64.b64decode(b64, validate=True)
            if signer == name and raw[:4] == key_id(name, pub):
                Ed25519PublicKey.from_public_bytes(pub).verify(raw[4:], text.encode())
                good = True
        if not good or origin != name:
            raise ValueError("not signed by the verifier key")
    return origin, size, root

def check_vote(kind, rec):
    """An approver's Ed25519 signature over the approval message (docs/approvals.md)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    want = {"approval.grant": "approve", "approval.reject": "reject"}[kind]
    if rec["decision"] != want:
        raise ValueError(f"decision {rec['decision']!r}")
    msg = (f"signerd approval v1\nclient: {rec['client']}\nrequest_id: {rec['req_id']}\n"
           f"fingerprint: {rec['fingerprint']}\ndecision: {want}\nexpires: {rec['expires']}\n")
    key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(rec["public_key"]))
    key.verify(bytes.fromhex(rec["signature"]), msg.encode())

ENVELOPE = re.compile(
    rb'\{"v":1,"seq":(0|[1-9][0-9]*),"ts":"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z)",'
    rb'"type":"([a-z0-9._]{1,64})"(,.*)?,"prev":"([0-9a-f]{64})"\}')

def no_duplicates(pairs):
    keys = [k for k, _ in pairs]
    if len(keys) != len(set(keys)):
        raise ValueError(f"duplicate key in {keys}")
    return dict(pairs)

def main():
    d = sys.argv[1]
    vkey = parse_vkey(sys.argv[2]) if len(sys.argv) > 2 else None
    names = sorted(n for n in os.listdir(d) if re.fullmatch(r"segment-\d{8}\.jsonl", n))
    if not names or names != [f"segment-{i:08d}.jsonl" for i in range(1, len(names) + 1)]:
        sys.exit(f"{d}: segments missing or not numbered 1, 2, 3, ...")
    seq, prev, tree, origin, last_cp = 0, bytes(32), Frontier(), None, None
    roots = {}  # tree size -> root, to check the checkpoint file at the end
    previous = None  # (name, sha256 hex, bytes) of the sealed previous segment
    for i, name in enumerate(names):
        data = open(os.path.join(d, name), "rb").read()
        last_segment = i + 1 == len(names)
        if data and not data.endswith(b"\n"):
            if not last_segment:
                fail(name, "incomplete last line in a sealed segment")
            data = data[:data.rfind(b"\n") + 1]
            print(f"warning: {name}: ignoring an incomplete last line (write in progress or torn)")
        lines = data.split(b"\n")[:-1]
        sealed = False
        for n, line in enumerate(lines):
            where = f"{name}:{n + 1} (seq {seq})"
            m = ENVELOPE.fullmatch(line)
            if not m:
                fail(where, "not a record: envelope layout")
            rec = json.loads(line.decode("utf-8"), object_pairs_hook=no_duplicates)
            if rec["seq"] != seq:
                fail(where, f"seq is {rec['seq']}, expected {seq}")
            if bytes.fromhex(rec["prev"]) != prev:
                fail(where, "prev does not match: the hash chain is broken")
            if sealed:
                fail(where, "record after audit.segment_seal")
            kind = rec["type"]
            if i > 0 and n == 0:
                if kind != "audit.segment_open" or rec["segment"] != name or \
                        [rec["previous"], rec["previous_sha256"], rec["previous_bytes"]] != list(previous):
                    fail(where, "segment does not start with a matching audit.segment_open")
            elif kind == "audit.segment_open":
                fail(where, "audit.segment_open inside a segment")
            if kind == "audit.segment_seal":
                if rec["segment"] != name or rec["records"] != n + 1 or \
                        rec["first_seq"] != seq - n:
                    fail(where, "audit.segment_seal does not describe its segment")
                sealed = True
            if kind == "audit.checkpoint":
                root = tree.root()
                if rec["size"] != seq or rec["root"] != root.hex():
                    fail(where, "checkpoint size/root do not match the records before it")
                try:
                    o, size, r = parse_note(rec["note"], vkey)
                except Exception as e:
                    fail(where, f"checkpoint note: {e}")
                if size != seq or r != root or (origin is not None and o != origin):
                    fail(where, "checkpoint note disagrees with the record or the origin changed")
                origin, last_cp = o, seq
            if kind in ("approval.grant", "approval.reject"):
                try:
                    check_vote(kind, rec)
                except Exception as e:
                    fail(where, f"{kind}: the signature does not verify ({e!r})")
            roots[tree.size] = tree.root()
            h = leaf_hash(line)
            tree.push(h)
            prev, seq = h, seq + 1
        roots[tree.size] = tree.root()
        if not last_segment and not sealed:
            fail(name, "does not end with audit.segment_seal")
        previous = (name, hashlib.sha256(data).hexdigest(), len(data))
    cp_file = os.path.join(d, "checkpoint")
    if os.path.exists(cp_file):
        try:
            _, size, root = parse_note(open(cp_file, encoding="utf-8").read(), vkey)
        except Exception as e:
            fail("checkpoint file", str(e))
        if roots.get(size) != root:
            fail("checkpoint file", f"covers {size} records; the log has {seq} or a different tree")
    signed = "signatures verified" if vkey else "signatures NOT checked"
    tail = seq - (last_cp + 1) if last_cp is not None else seq
    print(f"OK: {seq} records in {len(names)} segments, last checkpoint at seq {last_cp}, "
          f"{signed}, {tail} unattested records")

main()
