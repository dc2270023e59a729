#!/usr/bin/env python3
"""A third-party Modbus/TCP Security client for drivesec's interop tests.

Usage: pymodbus_client.py HOST PORT CA_PEM [CERT_PEM KEY_PEM] < ops.json

ops.json is a list of {"op": "read_holding"|"read_input", "addr": A, "count": N}
or {"op": "write_register", "addr": A, "value": V} or
{"op": "write_registers", "addr": A, "values": [..]} or {"op": "sleep", "secs": S}
(no result). Prints one JSON object:
{"connected": bool, "error": str|null, "results": [{"ok": bool,
"registers": [..], "exception": code}]}. Exit 0 unless the script itself broke.
"""
import json
import logging
import ssl
import sys
import time

from pymodbus.client import ModbusTlsClient
from pymodbus.exceptions import ModbusException

logging.disable(logging.CRITICAL)


def main():
    host, port, ca = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_verify_locations(ca)
    # pymodbus's client wraps the socket without server_hostname, so Python
    # cannot check the name; the chain to the OEM root is still verified.
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    if len(sys.argv) > 5:
        ctx.load_cert_chain(sys.argv[4], sys.argv[5])
    ops = json.load(sys.stdin)
    out = {"connected": False, "error": None, "results": []}
    client = ModbusTlsClient(host, port=port, sslctx=ctx, timeout=5, retries=0)
    try:
        if not client.connect():
            out["error"] = "connect failed"
            print(json.dumps(out))
            return
        out["connected"] = True
        for op in ops:
            kind = op["op"]
            if kind == "sleep":
                time.sleep(op["secs"])
                continue
            if kind == "read_holding":
                rr = client.read_holding_registers(op["addr"], count=op["count"])
            elif kind == "read_input":
                rr = client.read_input_registers(op["addr"], count=op["count"])
            elif kind == "write_register":
                rr = client.write_register(op["addr"], op["value"])
            elif kind == "write_registers":
                rr = client.write_registers(op["addr"], op["values"])
            else:
                raise SystemExit(f"unknown op {kind}")
            if rr.isError():
                out["results"].append({"ok": False, "exception": getattr(rr, "exception_code", None)})
            else:
                out["results"].append({"ok": True, "registers": list(getattr(rr, "registers", []) or [])})
    except (ModbusException, OSError, ssl.SSLError) as e:
        out["error"] = f"{type(e).__name__}: {e}"
    finally:
        client.close()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
