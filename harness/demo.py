"""The README's main job: a local demo on this machine.

Stage of the product: the foundation. The supervisor (`bindha-rwx run`, election and
fencing) does not exist yet, so this demo starts only the real control plane and one
real named rendered by bindha-rwx on a loopback address, and says so. Ctrl-C stops
everything and removes the temp directory.
"""

from __future__ import annotations

import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from bindha_rwx.render import render_bootstrap_zone, render_primary
from harness.bindlab import NamedProcess, load_pod_config, write_key_files, write_pod_config
from harness.loopback import ensure_alias
from harness.testplane import TestPlane, build_binary

POD_IP = "127.0.0.10"
ZONE = "demo.example"


def main() -> int:
    root = Path(tempfile.mkdtemp(prefix="bindha-demo-"))
    plane: TestPlane | None = None
    named: NamedProcess | None = None
    try:
        print("bindha-rwx demo (foundation stage): the supervisor is not built yet, so this")
        print("starts the real control plane and ONE named rendered by bindha-rwx; no election,")
        print("no failover yet.\n")
        started = time.monotonic()
        plane = TestPlane(binary=build_binary(), workdir=root / "testplane")
        plane.start()
        print(f"control plane: kube-apiserver at {plane.url}, ready in "
              f"{time.monotonic() - started:.1f}s")
        print(f"  export KUBECONFIG={plane.kubeconfig}")

        ensure_alias(POD_IP)
        shared = root / "shared-dyn"
        shared.mkdir()
        keys = write_key_files(root / "keys", ["update-key", "transfer-key"])
        zones = [{"name": ZONE,
                  "nameservers": [{"name": f"ns1.{ZONE}", "addresses": [POD_IP]}],
                  "updatePolicy": [{"key": "update-key", "rule": "zonesub"}]}]
        path = write_pod_config(root / "bind-master-0", pod_ip=POD_IP, dyn_dir=shared,
                                key_files=keys, zones=zones, rndc_port=9530)
        config = load_pod_config(path, "bind-master-0", POD_IP)
        zone = config.zones[0]
        (shared / zone.file_name).write_text(render_bootstrap_zone(zone))
        named = NamedProcess.from_text(config, render_primary(config))
        named.start()
        named.wait_serving()
        print(f"named: primary for {ZONE} on {POD_IP}:53, zone files in {shared}")
        print(f"  config: {path}\n  named.conf: {named.conf_path}\n  log: {named.log_path}\n")
        print("send an update:")
        print(f"  printf 'server {POD_IP}\\nzone {ZONE}\\nupdate add www.{ZONE} 300 A 192.0.2.1"
              f"\\nsend\\n' | nsupdate -k {keys['update-key']}")
        print(f"query it:\n  dig @{POD_IP} www.{ZONE} A +short\n")
        print("Ctrl-C stops everything.")
        sys.stdout.flush()
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
        print("\nstopping")
        return 0
    finally:
        if named is not None:
            named.stop()
        if plane is not None:
            plane.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
