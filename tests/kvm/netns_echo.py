"""Run inside a network namespace (by tests/kvm/test_net.py): boot the `net` fixture on
a tap, send frames into the tap from the host side, and print what came back as JSON."""

import json
import socket
import subprocess
import sys
import time

app, tap, mac, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
extra = sys.argv[5:]
proc = subprocess.Popen([sys.executable, "-m", "ukdbg", "run", f"--net:service={tap}",
                         f"--net-mac:service={mac}", *extra, app, str(count)],
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
first = proc.stdout.readline()          # "net: mac=... mtu=..." once the guest is up
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x88B5))
s.bind((tap, 0))
s.settimeout(10)
guest = bytes.fromhex(mac.replace(":", ""))
host = bytes.fromhex("0200000000aa")
sent, echoed = [], []
for i in range(count):
    payload = bytes([i]) * (46 + i * 100)
    frame = guest + host + b"\x88\xb5" + payload
    s.send(frame)
    sent.append(frame.hex())
    deadline = time.time() + 10
    while time.time() < deadline:
        got = s.recv(65536)
        if got[:6] == host:                # the echo (our own frame is filtered by dst)
            echoed.append(got.hex())
            break
out, err = proc.communicate(timeout=30)
print(json.dumps({"first": first, "stdout": out, "stderr": err, "rc": proc.returncode,
                  "sent": sent, "echoed": echoed}))
