#!/usr/bin/env python3
"""pymodbus's own Modbus/TCP Security server, the reference in benches/modbus.rs.

Usage: pymodbus_server.py HOST PORT CERT_PEM KEY_PEM CA_PEM
Serves 200 holding and input registers over TLS (1.2+), requiring a client
certificate from CA_PEM, until killed.
"""
import asyncio
import logging
import ssl
import sys

from pymodbus.datastore import (
    ModbusDeviceContext,
    ModbusSequentialDataBlock,
    ModbusServerContext,
)
from pymodbus.server import ModbusTlsServer

logging.disable(logging.CRITICAL)


async def main():
    host, port, cert, key, ca = sys.argv[1], int(sys.argv[2]), *sys.argv[3:6]
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    ctx.load_verify_locations(ca)
    ctx.verify_mode = ssl.CERT_REQUIRED
    device = ModbusDeviceContext(
        hr=ModbusSequentialDataBlock(1, list(range(200))),
        ir=ModbusSequentialDataBlock(1, list(range(200))),
    )
    server = ModbusTlsServer(
        ModbusServerContext(devices=device, single=True),
        address=(host, port),
        sslctx=ctx,
    )
    await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
