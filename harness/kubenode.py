"""A real Kubernetes node for the test plane: containerd + kubelet in a netns of its own.

PLACEHOLDER: the node is below the image packer.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import tarfile
from pathlib import Path

PAUSE_IMAGE = "docker.io/bindha/pause:1"
TEST_IMAGE = "docker.io/bindha/testbox:1"
IMAGE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def _layer(files: dict[str, Path | bytes]) -> bytes:
    """An uncompressed, reproducible layer tar: every parent directory, root-owned, mtime 0."""
    buffer = io.BytesIO()
    dirs = {str(parent.relative_to("/")) for p in files for parent in Path(p).parents
            if parent != Path("/")}
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(dirs):
            info = tarfile.TarInfo(name)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        for path, source in sorted(files.items()):
            data = source if isinstance(source, bytes) else source.read_bytes()
            info = tarfile.TarInfo(path.lstrip("/"))
            info.size = len(data)
            info.mode = 0o644 if isinstance(source, bytes) else 0o755
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def pack_image(out: Path, name: str, files: dict[str, Path | bytes],
               entrypoint: list[str]) -> Path:
    """Write an OCI image-layout tarball that `ctr images import` takes without a registry.

    ``files`` maps absolute paths in the image to a host file (mode 0755) or to bytes (0644).
    The index carries ``io.containerd.image.name``, so the import keeps the full name.
    """
    blobs: dict[str, bytes] = {}

    def blob(data: bytes, media_type: str) -> dict[str, object]:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        blobs[digest] = data
        return {"mediaType": media_type, "digest": digest, "size": len(data)}

    layer = _layer(files)
    layer_desc = blob(layer, "application/vnd.oci.image.layer.v1.tar")
    config = {"architecture": "amd64", "os": "linux",
              "config": {"Entrypoint": entrypoint, "Env": [f"PATH={IMAGE_PATH}"]},
              "rootfs": {"type": "layers", "diff_ids": [layer_desc["digest"]]}}
    config_desc = blob(json.dumps(config, sort_keys=True).encode(),
                       "application/vnd.oci.image.config.v1+json")
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": config_desc, "layers": [layer_desc]}
    manifest_desc = blob(json.dumps(manifest, sort_keys=True).encode(),
                         "application/vnd.oci.image.manifest.v1+json")
    manifest_desc["platform"] = {"architecture": "amd64", "os": "linux"}
    manifest_desc["annotations"] = {"io.containerd.image.name": name,
                                    "org.opencontainers.image.ref.name": name.rsplit(":", 1)[1]}
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
             "manifests": [manifest_desc]}
    entries = {"oci-layout": json.dumps({"imageLayoutVersion": "1.0.0"}).encode(),
               "index.json": json.dumps(index, sort_keys=True).encode()}
    entries.update({f"blobs/sha256/{d.split(':', 1)[1]}": data for d, data in blobs.items()})
    out.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(out, "w") as tar:
        for dirname in ("blobs", "blobs/sha256"):
            info = tarfile.TarInfo(dirname)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        for entry, data in entries.items():
            info = tarfile.TarInfo(entry)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.kubenode")
    sub = parser.add_subparsers(dest="action", required=True)
    pack = sub.add_parser("pack-pause", help="pack the pause binary into the pause image")
    pack.add_argument("binary", type=Path)
    pack.add_argument("out", type=Path)
    args = parser.parse_args()
    if args.action == "pack-pause":
        pack_image(args.out, PAUSE_IMAGE, {"/pause": args.binary}, ["/pause"])
        print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
