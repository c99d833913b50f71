"""Rendering: every rendered config passes named-checkconf, every bootstrap zone
named-checkzone; BIND's tools refuse what is broken, and we report their words."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bindha_rwx.bindtools import BindToolError, check_conf, check_zone, ensure_key_file
from bindha_rwx.config import ConfigError, NameServer, Soa, Zone, parse_config
from bindha_rwx.render import (
    RNDC_KEY_NAME,
    render_bootstrap_zone,
    render_primary,
    render_secondary,
)


@pytest.fixture
def config_data(tmp_path, key_files):
    work = tmp_path / "work"
    work.mkdir()
    rndc_key = work / "rndc.key"
    ensure_key_file(rndc_key, RNDC_KEY_NAME)
    return {
        "paths": {"workDir": str(work), "dynDir": str(tmp_path / "dyn"),
                  "rndcKey": str(rndc_key)},
        "keys": [{"name": n, "file": str(p)} for n, p in key_files.items()],
        "secondaries": {"transferKey": "transfer-key"},
        "zones": [
            {"name": "example.com",
             "nameservers": [{"name": "ns1.example.com", "addresses": ["192.0.2.1",
                                                                       "2001:db8::1"]}],
             "updatePolicy": [{"key": "update-key", "rule": "zonesub"},
                              {"key": "update-key", "rule": "name", "name": "www.example.com",
                               "types": ["A", "AAAA"], "action": "deny"},
                              {"key": "update-key", "rule": "wildcard",
                               "name": "*.dyn.example.com", "types": ["TXT"]}]},
            {"name": "10.in-addr.arpa", "nameservers": ["ns1.example.com"],
             "allowUpdate": ["update-key"]},
        ],
    }


def make(config_data, env=None):
    env = {"POD_NAME": "bind-master-0", "POD_IP": "10.0.0.5"} if env is None else env
    return parse_config(yaml.safe_dump(config_data), env=env)


def test_primary_passes_named_checkconf(config_data):
    config = make(config_data)
    text = render_primary(config, also_notify=["10.0.0.9", "10.0.0.10", "10.0.0.9"])
    check_conf(text)
    assert "notify explicit;" in text and "notify-delay 0;" in text
    assert "notify-rate 1000;" in text  # a 10 ms pacing tick, not BIND's 0.5 s
    assert "recursion no;" in text
    assert "allow-query { any; };" in text
    assert "listen-on port 53 { 10.0.0.5; 127.0.0.1; };" in text
    assert 'inet 127.0.0.1 port 953 allow { 127.0.0.1; } keys { "bindha-rndc"; };' in text
    assert f'file "{config.paths.dyn_dir}/example.com.zone";' in text
    assert 'grant "update-key" zonesub ANY;' in text
    assert 'deny "update-key" name www.example.com. A AAAA;' in text
    assert 'allow-update { key "update-key"; };' in text
    assert 'allow-transfer { key "transfer-key"; };' in text
    # sorted numerically, duplicates removed, signed with the transfer key
    assert ('also-notify { 10.0.0.9 port 53 key "transfer-key"; '
            '10.0.0.10 port 53 key "transfer-key"; };') in text
    assert "channel to_stderr { stderr;" in text
    assert "secret" not in text  # keys are included, never inlined


def test_allow_transfer_keys_beside_the_transfer_key(config_data):
    # ExternalDNS's key both updates and transfers; the other zone keeps the transfer key only
    config_data["zones"][0]["allowTransfer"] = ["update-key", "transfer-key"]
    config_data["zones"][1]["allowTransfer"] = ["transfer-key"]
    config = make(config_data)
    text = render_primary(config, also_notify=["10.0.0.9"])
    check_conf(text)
    first, second = text.split('zone "example.com." {')[1].split('zone "10.in-addr.arpa." {')
    # the transfer key first, each key once
    assert 'allow-transfer { key "transfer-key"; key "update-key"; };' in first
    assert 'allow-transfer { key "transfer-key"; };' in second
    # NOTIFYs stay signed with the transfer key alone
    assert 'also-notify { 10.0.0.9 port 53 key "transfer-key"; };' in first
    # a secondary's zone is untouched: it serves no transfers
    assert "update-key" not in render_secondary(config, "10.0.0.7").split("zone ")[1]


def test_allow_transfer_without_secondaries(config_data):
    del config_data["secondaries"]
    config_data["zones"][0]["allowTransfer"] = ["update-key"]
    text = render_primary(make(config_data))
    check_conf(text)
    assert 'allow-transfer { key "update-key"; };' in text
    assert "also-notify { };" in text
    assert "no secondaries.transferKey configured" in text  # the other zone


def test_acls_render_and_pass_named_checkconf(config_data):
    config_data["acls"] = {"internal": ["10.0.0.0/8"], "office": ["192.0.2.0/24", "2001:db8::1"]}
    config_data["allowQuery"] = ["internal", "office", "localhost"]
    config = make(config_data)
    for text in (render_primary(config), render_secondary(config, "10.0.0.7")):
        check_conf(text)
        assert "acl internal { 10.0.0.0/8; };" in text
        assert "allow-query { internal; office; localhost; };" in text


def test_primary_without_secondaries_or_pod_ip(config_data):
    del config_data["secondaries"]
    text = render_primary(make(config_data, env={}))
    check_conf(text)
    assert "also-notify { };" in text
    assert "allow-transfer { none; };  # no secondaries.transferKey configured" in text
    assert "listen-on port 53 { 127.0.0.1; };" in text
    assert "notify-source" not in text


def test_secondary_passes_named_checkconf(config_data):
    config = make(config_data)
    text = render_secondary(config, "10.0.0.7")
    check_conf(text)
    assert "type secondary;" in text and "type primary;" not in text
    assert 'primaries { 10.0.0.7 port 53 key "transfer-key"; };' in text
    assert "allow-notify { 10.0.0.7; };" in text
    assert f'file "{config.paths.work_dir}/secondary/example.com.zone";' in text
    assert "allow-update { none; };" in text and "notify no;" in text
    assert "serial-query-rate 1000;" in text


def test_ipv6_pod(config_data):
    config = make(config_data, env={"POD_IP": "fd00::5"})
    text = render_secondary(config, "fd00::7")
    check_conf(text)
    assert "listen-on-v6 port 53 { fd00::5; };" in text
    assert "transfer-source-v6 fd00::5;" in text


def test_secondary_needs_transfer_key(config_data):
    del config_data["secondaries"]
    with pytest.raises(ConfigError, match=r"secondaries\.transferKey: not set"):
        render_secondary(make(config_data), "10.0.0.7")


def test_bootstrap_zones_pass_named_checkzone(config_data):
    for zone in make(config_data).zones:
        text = render_bootstrap_zone(zone)
        check_zone(zone.name, text)
    assert "ns1.example.com. IN AAAA 2001:db8::1" in render_bootstrap_zone(
        make(config_data).zones[0])


def test_named_checkzone_refuses_what_validation_refuses():
    """The glue rule config enforces is BIND's own: without it named-checkzone says no."""
    zone = Zone(name="example.com.", soa=Soa("ns1.example.com.", "hostmaster.example.com."),
                nameservers=(NameServer("ns1.example.com."),),
                allow_update=("k",))
    with pytest.raises(BindToolError, match="has no address records"):
        check_zone(zone.name, render_bootstrap_zone(zone))


def test_named_checkconf_refusal_is_reported(config_data):
    text = render_primary(make(config_data)).replace("notify explicit;", "notify sometimes;")
    with pytest.raises(BindToolError) as info:
        check_conf(text)
    assert "named-checkconf refused the rendered config" in str(info.value)
    assert "named.conf:" in str(info.value)  # named's own words, with the line


def run_cli(*args, env):
    return subprocess.run([sys.executable, "-m", "bindha_rwx", "render", *args],
                          capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/usr/sbin:/bin", **env})


def test_cli_render(tmp_path, config_data):
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(config_data))
    env = {"POD_NAME": "bind-master-1", "POD_IP": "10.0.0.6"}
    result = run_cli("--config", str(config_file), "--role", "primary",
                     "--also-notify", "10.0.0.8", env=env)
    assert result.returncode == 0, result.stderr
    assert "pod bind-master-1, role primary" in result.stdout
    assert "10.0.0.8 port 53" in result.stdout

    result = run_cli("--config", str(config_file), "--role", "secondary", env=env)
    assert result.returncode == 2
    assert "--primary IP is required with --role secondary" in result.stderr

    result = run_cli("--config", str(config_file), "--role", "primary", "--also-notify",
                     "10.0.0.8,nope", env=env)
    assert result.returncode == 2 and "'nope' is not an IP address" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_render_missing_work_dir(tmp_path, config_data):
    config_data["paths"]["workDir"] = str(tmp_path / "absent")
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(config_data))
    result = run_cli("--config", str(config_file), "--role", "primary", env={})
    assert result.returncode == 2
    assert "paths.workDir" in result.stderr and "--no-check" in result.stderr
    result = run_cli("--config", str(config_file), "--role", "primary", "--no-check", env={})
    assert result.returncode == 0 and "type primary;" in result.stdout


def test_render_writes_nothing(tmp_path, config_data):
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(config_data))
    before = sorted(p.relative_to(tmp_path) for p in Path(tmp_path).rglob("*"))
    assert run_cli("--config", str(config_file), "--role", "primary", env={}).returncode == 0
    after = sorted(p.relative_to(tmp_path) for p in Path(tmp_path).rglob("*"))
    assert after == before
