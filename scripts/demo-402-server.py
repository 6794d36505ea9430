#!/usr/bin/env python3
"""A tiny x402 v2 paid endpoint for the README walk-through (standard library only).

GET /premium without PAYMENT-SIGNATURE -> 402 with a PAYMENT-REQUIRED header (Base Sepolia USDC,
0.01 USDC to a demo payee). With PAYMENT-SIGNATURE -> decodes it and checks what a resource server
checks before calling its facilitator: x402Version, `accepted` equal to what was offered, and the
authorization's payee, value and validity window. It does NOT verify the ECDSA signature or settle
on chain (the official facilitator does that); it answers 200 with the decoded payment.

    python3 scripts/demo-402-server.py [PORT]      (default 8402, listens on 127.0.0.1)
"""
import base64
import json
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

REQUIREMENT = {
    "scheme": "exact",
    "network": "eip155:84532",
    "amount": "10000",
    "asset": "0x036CbD53842c5426634e7929541eC2318f3dCF7e",
    "payTo": "0x209693Bc6afc0C5328bA36FaF03C514EF312287C",
    "maxTimeoutSeconds": 60,
    "extra": {"name": "USDC", "version": "2"},
}


def payment_required(url):
    body = {
        "x402Version": 2,
        "error": "PAYMENT-SIGNATURE header is required",
        "resource": {"url": url, "description": "Demo premium data", "mimeType": "application/json"},
        "accepts": [REQUIREMENT],
    }
    return base64.b64encode(json.dumps(body, separators=(",", ":")).encode()).decode()


def check(header):
    payload = json.loads(base64.b64decode(header, validate=True))
    assert payload.get("x402Version") == 2, "x402Version must be 2"
    assert payload.get("accepted") == REQUIREMENT, "accepted does not match the offered requirement"
    auth = payload["payload"]["authorization"]
    assert auth["to"].lower() == REQUIREMENT["payTo"].lower(), "wrong payee"
    assert int(auth["value"]) == int(REQUIREMENT["amount"]), "wrong amount"
    now = int(time.time())
    assert int(auth["validAfter"]) <= now, "not yet valid"
    assert int(auth["validBefore"]) >= now + 6, "expired"
    sig = payload["payload"]["signature"]
    assert sig.startswith("0x") and len(sig) == 132 and sig[-2:] in ("1b", "1c"), "not a 65-byte signature"
    return payload


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        url = f"http://{self.headers.get('Host', 'localhost')}{self.path}"
        sig = self.headers.get("PAYMENT-SIGNATURE")
        if not sig:
            self.send_response(402)
            self.send_header("PAYMENT-REQUIRED", payment_required(url))
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b"{}")
            return
        try:
            payload = check(sig)
        except Exception as e:  # noqa: BLE001 - any failure is a rejected payment
            self.send_response(402)
            self.send_header("PAYMENT-REQUIRED", payment_required(url))
            self.end_headers()
            self.wfile.write(json.dumps({"error": str(e)}).encode())
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        auth = payload["payload"]["authorization"]
        self.wfile.write(json.dumps({"data": "premium content", "paidBy": auth["from"], "value": auth["value"]}).encode() + b"\n")

    def log_message(self, fmt, *args):
        sys.stderr.write("demo-402: " + fmt % args + "\n")


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8402
    print(f"demo x402 endpoint on http://127.0.0.1:{port}/premium", flush=True)
    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
