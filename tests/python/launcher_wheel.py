#!/usr/bin/env python3
"""Builds a wheel of procscope_launcher.py with a `procscope-launcher`
console script, into OUTDIR, and prints its path. No build backend is
needed (none is downloaded): a pure-Python wheel is a zip of the module and
its .dist-info (PEP 427).

Usage: launcher_wheel.py OUTDIR
"""

import base64
import hashlib
import os
import sys
import zipfile

NAME, VERSION = "procscope_launcher", "0.0.0"


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    here = os.path.dirname(os.path.abspath(__file__))
    with open(os.path.join(here, "procscope_launcher.py"), "rb") as f:
        module = f.read()
    info = f"{NAME}-{VERSION}.dist-info"
    files = {
        f"{NAME}.py": module,
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: procscope-launcher\nVersion: {VERSION}\n".encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: launcher_wheel.py\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        f"{info}/entry_points.txt": f"[console_scripts]\nprocscope-launcher = {NAME}:main\n".encode(),
    }
    record = []
    for name, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(data)}")
    record.append(f"{info}/RECORD,,")
    files[f"{info}/RECORD"] = ("\n".join(record) + "\n").encode()
    path = os.path.join(out, f"{NAME}-{VERSION}-py3-none-any.whl")
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in files.items():
            z.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), data)
    print(path)


if __name__ == "__main__":
    main()
