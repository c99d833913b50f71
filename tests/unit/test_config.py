"""Config validation: good input parses; each bad input names the key and the fix."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bindha_rwx import config as config_module
from bindha_rwx.config import (
    ConfigError,
    Timing,
    load_config,
    parse_config,
    parse_duration,
    parse_tsig_key_file,
)

ENV = {"POD_NAME": "bind-master-0", "POD_NAMESPACE": "dns", "POD_IP": "10.0.0.5",
       "NODE_NAME": "node-a"}


def base(key_files: dict[str, Path]) -> dict:
    return {
        "keys": [{"name": n, "file": str(p)} for n, p in key_files.items()],
        "secondaries": {"transferKey": "transfer-key"},
        "zones": [{"name": "example.com",
                   "nameservers": [{"name": "ns1.example.com", "addresses": ["192.0.2.1"]}],
                   "updatePolicy": [{"key": "update-key", "rule": "zonesub"}]}],
    }


def parse(data: dict, env: dict | None = None):
    return parse_config(yaml.safe_dump(data), env=ENV if env is None else env)


def problems(data: dict, env: dict | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse(data, env)
    return info.value.problems


def test_defaults_and_pod_env(key_files):
    config = parse(base(key_files))
    assert config.lease_name == "bind-master-leader"
    assert config.timing == Timing(10.0, 6.0, 2.0, 3.0)
    assert str(config.paths.named_conf) == "/var/run/bindha/named.conf"
    assert str(config.paths.dyn_dir) == "/var/lib/named/dyn"
    assert str(config.paths.role_file) == "/var/run/bindha/role"
    assert (config.role_label.key, config.role_label.leader, config.role_label.standby) == (
        "role", "leader", "standby")
    assert (config.ports.dns, config.ports.rndc) == (53, 953)
    assert config.namespace == "dns"
    assert config.pod.name == "bind-master-0" and config.pod.ip == "10.0.0.5"
    assert config.pod.node == "node-a"
    zone = config.zone("EXAMPLE.com")
    assert zone.name == "example.com." and zone.file_name == "example.com.zone"
    assert zone.soa.primary == "ns1.example.com." and zone.soa.contact == "hostmaster.example.com."
    assert config.keys["update-key"].algorithm == "hmac-sha256"


def test_example_config_in_docs_is_valid(tmp_path, key_files):
    """docs/config.example.yaml, with its key paths pointed at real key files, loads."""
    text = (Path(__file__).parents[2] / "docs" / "config.example.yaml").read_text()
    text = text.replace("/etc/bindha/keys/update-key.key", str(key_files["update-key"]))
    text = text.replace("/etc/bindha/keys/transfer-key.key", str(key_files["transfer-key"]))
    config = parse_config(text, env={**ENV, "POD_NAMESPACE": "dns"})
    assert [z.name for z in config.zones] == ["example.com.", "dhcp.example.net."]
    assert config.timing.lease_duration == 10.0
    assert config.zones[1].allow_update == ("update-key",)


@pytest.mark.parametrize("value,seconds", [(10, 10.0), (2.5, 2.5), ("10s", 10.0),
                                           ("500ms", 0.5), ("1m", 60.0), (" 3 ", 3.0)])
def test_durations(value, seconds):
    assert parse_duration(value) == seconds


@pytest.mark.parametrize("value", ["ten", "10h", True, None, [], "-1s"])
def test_bad_durations(value):
    with pytest.raises(ValueError):
        parse_duration(value)


def test_timing_budget_enforced(key_files):
    data = base(key_files)
    data["timing"] = {"leaseDuration": "8s", "renewDeadline": "6s", "retryPeriod": "6s",
                      "stopTimeout": "3s"}
    found = problems(data)
    assert any(p.startswith("timing.retryPeriod: 6s must be less than renewDeadline")
               for p in found), found
    assert any(p.startswith("timing.leaseDuration: renewDeadline + stopTimeout = 6s + 3s")
               and "raise leaseDuration" in p for p in found), found


def test_short_test_timings_accepted(key_files):
    data = base(key_files)
    data["timing"] = {"leaseDuration": 2, "renewDeadline": 1.2, "retryPeriod": 0.3,
                      "stopTimeout": 0.5}
    assert parse(data).timing.renew_deadline == 1.2


def test_unknown_key_suggests_the_right_one(key_files):
    data = base(key_files)
    data["timing"] = {"leaseDuraton": 10}
    found = problems(data)
    assert found == ["timing.leaseDuraton: unknown key; did you mean 'leaseDuration'?"]


def test_all_problems_reported_at_once(key_files):
    data = base(key_files)
    data["ports"] = {"dns": 0, "rndc": "x"}
    data["lease"] = {"name": "Bad Name!"}
    found = problems(data)
    assert len(found) == 3, found
    assert "ports.dns: 0 is not valid: use a whole number from 1 to 65535" in found


def test_bad_pod_ip(key_files):
    found = problems(base(key_files), env={**ENV, "POD_IP": "10.0.0.300"})
    assert found == ["POD_IP: '10.0.0.300' is not an IP address: set it from the downward API "
                     "(fieldRef status.podIP)"]


def test_namespace_mismatch(key_files):
    data = base(key_files)
    data["namespace"] = "other"
    assert "differs from POD_NAMESPACE='dns'" in problems(data)[0]


def test_missing_key_file_names_the_fix(tmp_path, key_files):
    data = base(key_files)
    data["keys"][0]["file"] = str(tmp_path / "nope.key")
    found = problems(data)
    # One problem only: the zone's reference to the broken key is not reported twice.
    assert len(found) == 1, found
    assert found[0].startswith("keys[0].file: ")
    assert "tsig-keygen -a hmac-sha256 update-key" in found[0]


def test_key_file_with_other_name(tmp_path, key_files):
    wrong = tmp_path / "wrong.key"
    wrong.write_text(key_files["transfer-key"].read_text())
    data = base(key_files)
    data["keys"][0]["file"] = str(wrong)
    assert "has no `key \"update-key\"` clause (found: transfer-key)" in problems(data)[0]


def test_key_file_bad_secret_and_algorithm(tmp_path, key_files):
    bad = tmp_path / "bad.key"
    bad.write_text('key "update-key" { algorithm hmac-sha256; secret "not base64!"; };')
    data = base(key_files)
    data["keys"][0]["file"] = str(bad)
    assert "is not base64" in problems(data)[0]
    bad.write_text('key "update-key" { algorithm rot13; secret "aGVsbG8="; };')
    assert "algorithm 'rot13' of key 'update-key' is not supported" in problems(data)[0]


def test_relative_key_path_resolves_next_to_config(tmp_path, key_files):
    (tmp_path / "keys").mkdir()
    for name, path in key_files.items():
        (tmp_path / "keys" / f"{name}.key").write_text(path.read_text())
    data = base(key_files)
    data["keys"] = [{"name": n, "file": f"keys/{n}.key"} for n in key_files]
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(data))
    config = load_config(config_file, env=ENV)
    assert config.keys["update-key"].file == tmp_path / "keys" / "update-key.key"


def test_undefined_key_reference(key_files):
    data = base(key_files)
    data["zones"][0]["updatePolicy"][0]["key"] = "ddns"
    assert problems(data) == ["zones[0].updatePolicy[0].key: key 'ddns' is not defined: add it "
                              "to keys (known: update-key, transfer-key)"]


@pytest.mark.parametrize("name", ["exa mple.com", "-bad.com", "a..b", "x/../../etc", ""])
def test_bad_zone_names(key_files, name):
    data = base(key_files)
    data["zones"][0]["name"] = name
    assert problems(data)[0].startswith("zones[0].name: ")


def test_zone_policy_rules(key_files):
    data = base(key_files)
    data["zones"][0]["allowUpdate"] = ["update-key"]
    assert "has both updatePolicy and allowUpdate" in problems(data)[0]
    del data["zones"][0]["allowUpdate"]
    del data["zones"][0]["updatePolicy"]
    assert "takes no updates" in problems(data)[0]
    data["zones"][0]["updatePolicy"] = [{"key": "update-key", "rule": "name"}]
    assert "rule name needs a name" in problems(data)[0]
    data["zones"][0]["updatePolicy"] = [{"key": "update-key", "rule": "zonesub",
                                         "types": ["A", "BOGUS"]}]
    assert "'BOGUS' is not a record type" in problems(data)[0]
    data["zones"][0]["updatePolicy"] = [{"key": "update-key", "rule": "krb5-self"}]
    assert "'krb5-self' is not supported" in problems(data)[0]


def test_in_zone_name_server_needs_glue(key_files):
    data = base(key_files)
    data["zones"][0]["nameservers"] = ["ns1.example.com"]
    found = problems(data)
    assert found == ["zones[0].nameservers[0]: ns1.example.com. lies inside zone example.com., "
                     "so named needs its address (glue) to load the zone: add addresses: "
                     "[IP, ...]"]


def test_duplicate_zone(key_files):
    data = base(key_files)
    data["zones"].append(dict(data["zones"][0], name="EXAMPLE.COM."))
    assert "zone example.com. is listed twice" in problems(data)[0]


def test_transfer_key_must_exist(key_files):
    data = base(key_files)
    data["secondaries"]["transferKey"] = "axfr"
    assert problems(data)[0].startswith("secondaries.transferKey: 'axfr' is not in keys")


def test_allow_transfer_keys(key_files):
    data = base(key_files)
    assert parse(data).zone("example.com").allow_transfer == ()
    # the update key may also transfer: what ExternalDNS's rfc2136 provider needs
    data["zones"][0]["allowTransfer"] = ["update-key"]
    assert parse(data).zone("example.com").allow_transfer == ("update-key",)


@pytest.mark.parametrize(("value", "expected"), [
    (["external-dns"], ["zones[0].allowTransfer[0]: key 'external-dns' is not defined: add it "
                        "to keys (known: update-key, transfer-key)"]),
    ("update-key", ["zones[0].allowTransfer: expected a list of TSIG key names from keys "
                    "(such as [external-dns]), got 'update-key': list them, or remove "
                    "allowTransfer"]),
    ([], ["zones[0].allowTransfer: expected a list of TSIG key names from keys (such as "
          "[external-dns]), got []: list them, or remove allowTransfer"]),
    (["update-key", "update-key"], ["zones[0].allowTransfer[1]: key 'update-key' is listed "
                                    "twice: remove one"]),
    ([7], ["zones[0].allowTransfer[0]: expected the name of a key from keys, got 7"]),
])
def test_bad_allow_transfer(key_files, value, expected):
    data = base(key_files)
    data["zones"][0]["allowTransfer"] = value
    assert problems(data) == expected


def test_cli_exits_2_on_an_undefined_allow_transfer_key(tmp_path, key_files):
    data = base(key_files)
    data["zones"][0]["allowTransfer"] = ["external-dns"]
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(data))
    result = subprocess.run([sys.executable, "-m", "bindha_rwx", "render", "--role", "primary",
                             "--config", str(config_file)], capture_output=True, text=True,
                            timeout=60, env={**ENV, "PATH": "/usr/bin:/usr/sbin:/bin"})
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert ("zones[0].allowTransfer[0]: key 'external-dns' is not defined: add it to keys"
            in result.stderr)
    assert result.stdout == ""


def test_rndc_key_must_not_be_on_the_shared_volume(key_files):
    data = base(key_files)
    data["paths"] = {"rndcKey": "/var/lib/named/dyn/rndc.key"}
    assert "is on the shared volume" in problems(data)[0]


def test_yaml_syntax_error_names_the_line():
    with pytest.raises(ConfigError) as info:
        parse_config("zones:\n  - name: [a\n", env=ENV)
    assert "not valid YAML at line" in info.value.problems[0]


@pytest.mark.parametrize("loader", ["CSafeLoader", "SafeLoader"])
def test_yaml_loader_c_when_built_in_pure_python_otherwise(monkeypatch, key_files, loader):
    """libyaml's loader is ~8x faster at 1,000 zones; both give the same data and both
    name the line of a syntax error."""
    if loader == "CSafeLoader":
        if not getattr(yaml, "__with_libyaml__", False):
            pytest.skip("this PyYAML was built without libyaml")
        assert config_module.YAML_LOADER is yaml.CSafeLoader  # the default when built in
    monkeypatch.setattr(config_module, "YAML_LOADER", getattr(yaml, loader))
    assert parse(base(key_files)).zones[0].name == "example.com."
    with pytest.raises(ConfigError) as info:
        parse_config("keys: []\nzones:\n  - name: [a\n", env=ENV)
    assert info.value.problems[0].startswith("not valid YAML at line 4, column 1")


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "absent.yaml")
    assert "pass --config PATH" in info.value.problems[0]


def test_tsig_key_file_parser():
    text = 'key "a" {\n\talgorithm hmac-sha512;\n\tsecret "c2VjcmV0";\n};\nkey b { };'
    assert parse_tsig_key_file(text) == [("a", "hmac-sha512", "c2VjcmV0"), ("b", "", "")]


def test_cli_reports_bad_config_without_traceback(tmp_path, key_files):
    data = base(key_files)
    data["timing"] = {"leaseDuration": 5}
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(data))
    result = subprocess.run([sys.executable, "-m", "bindha_rwx", "render", "--role", "primary",
                             "--config", str(config_file)], capture_output=True, text=True,
                            timeout=60, env={**ENV, "PATH": "/usr/bin:/usr/sbin:/bin"})
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert f"invalid configuration in {config_file}:" in result.stderr
    assert "timing.leaseDuration: renewDeadline + stopTimeout = 6s + 3s" in result.stderr
    assert result.stdout == ""


def test_acls_and_allow_query(key_files):
    data = base(key_files)
    data["acls"] = {"internal": ["10.0.0.0/8", "192.168.1.7"]}
    data["allowQuery"] = ["internal", "localhost", "2001:db8::/32"]
    config = parse(data)
    assert config.acls == {"internal": ("10.0.0.0/8", "192.168.1.7/32")}
    assert config.allow_query == ("internal", "localhost", "2001:db8::/32")
    assert parse(base(key_files)).allow_query == ("any",)


def test_bad_acls(key_files):
    data = base(key_files)
    data["acls"] = {"any": ["10.0.0.0/8"], "office": ["10.0.0.0/33"]}
    data["allowQuery"] = ["officce"]
    found = problems(data)
    assert found[0].startswith("acls.any: 'any' is not a usable ACL name")
    assert found[1] == ("acls.office[0]: '10.0.0.0/33' is not an IP address or CIDR such as "
                        "10.0.0.0/8")
    assert found[2].startswith("allowQuery[0]: 'officce' is not an ACL: define it under acls")


def test_storage_fencing_is_off_by_default_and_names_unreadable_files(key_files, tmp_path):
    assert parse(base(key_files)).fencing.storage == "none"
    conf = tmp_path / "ceph.conf"
    conf.write_text("[global]\nmon_host = [v2:10.0.0.1:3300]\n")
    data = base(key_files)
    data["fencing"] = {"storage": "ceph", "ceph": {"conf": str(conf),
                                                   "keyring": str(tmp_path / "absent")}}
    found = problems(data)
    assert any("fencing.ceph.keyring" in p and str(tmp_path / "absent") in p
               and "allow *" in p for p in found), found
    data["fencing"]["storage"] = "nfs"
    assert any("fencing.storage" in p for p in problems(data))
    keyring = tmp_path / "fencer.keyring"
    keyring.write_text("[client.fencer]\n\tkey = AQBGUg9rHv+BKhAAqD/Ka4tsPx2oAhaH32EnsA==\n")
    data["fencing"] = {"storage": "ceph", "ceph": {"conf": str(conf), "keyring": str(keyring),
                                                   "id": "fencer", "mds": "cephfs:0",
                                                   "timeout": "5s"}}
    fencing = parse(data).fencing
    assert (fencing.storage, fencing.ceph_id, fencing.ceph_mds, fencing.timeout) == (
        "ceph", "fencer", "cephfs:0", 5.0)


def test_storage_fencing_checks_what_it_can_without_the_cluster(key_files, tmp_path):
    """A keyring without the fencer's key, a ceph.conf that names no monitor, a root
    that is no absolute path: refused at load, naming the file or setting and the fix."""
    conf = tmp_path / "ceph.conf"
    conf.write_text("[global]\n# mon_host = commented out\nfsid = 1\n")
    keyring = tmp_path / "keyring"
    keyring.write_text("[client.admin]\n\tkey = AQBGUg9rHv+BKhAAqD/Ka4tsPx2oAhaH32EnsA==\n"
                       "[client.fencer]\n\tcaps mds = \"allow *\"\n")
    data = base(key_files)
    data["fencing"] = {"storage": "ceph", "ceph": {
        "conf": str(conf), "keyring": str(keyring), "id": "bindha", "root": "volumes/x",
        "auto": "yes"}}
    found = problems(data)
    assert any(p.startswith("fencing.ceph.conf") and str(conf) in p and "mon_host" in p
               for p in found), found
    assert any(p.startswith("fencing.ceph.keyring") and str(keyring) in p
               and "no key for client.bindha" in p and "client.admin, client.fencer" in p
               and "fencing.ceph.id" in p for p in found), found
    assert any(p.startswith("fencing.ceph.root") and "absolute path" in p for p in found)
    assert any(p.startswith("fencing.ceph.auto") for p in found), found
    data["fencing"]["ceph"]["id"] = "fencer"  # a section, but no key line in it
    assert any("[client.fencer] section without a key" in p for p in problems(data))
    data["fencing"]["ceph"] = {"conf": str(conf), "keyring": str(tmp_path / "nope")}
    assert any(p.startswith("fencing.ceph.keyring") and "cannot be read" in p
               for p in problems(data))

    conf.write_text("[global]\nmon host = 10.0.0.1\n")
    keyring.write_text("[client.fencer]\n\tkey = AQBGUg9rHv+BKhAAqD/Ka4tsPx2oAhaH32EnsA==\n")
    data["fencing"] = {"storage": "ceph", "ceph": {
        "conf": str(conf), "keyring": str(keyring), "id": "fencer",
        "root": "//volumes/csi/v/", "auto": False}}
    fencing = parse(data).fencing
    assert (fencing.ceph_root, fencing.auto) == ("/volumes/csi/v", False)
    assert parse(base(key_files)).fencing.auto is True
