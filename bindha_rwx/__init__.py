"""bindha-rwx: active/passive HA for ISC BIND 9 on Kubernetes over one RWX volume."""

__version__ = "0.1.0"
