"""parse_soa_serial against replies dnspython builds: every serial, every name shape.

A bug here skipped one name too many and read the serial one byte late: serial 45 came
out as 11520, and a date-style serial (2026120201) as nothing at all.
"""

from __future__ import annotations

import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.renderer
import dns.rrset
import pytest

from bindha_rwx.soa import parse_soa_serial, serial_lt

ZONE = "ha.example."


def reply(query: dns.message.Message, serial: int, mname: str, rname: str,
          compress: bool = True) -> bytes:
    response = dns.message.make_response(query)
    soa = dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.SOA,
                              f"{mname} {rname} {serial} 60 60 600 60")
    response.answer.append(dns.rrset.from_rdata(ZONE, 300, soa))
    return response.to_wire() if compress else _uncompressed(response)


def _uncompressed(response: dns.message.Message) -> bytes:
    renderer = dns.renderer.Renderer(response.id, response.flags, 65535, None)
    for rrset in response.question:
        renderer.add_question(rrset.name, rrset.rdtype, rrset.rdclass)
    for rrset in response.answer:
        renderer.add_rrset(dns.renderer.ANSWER, rrset)
    renderer.write_header()
    return renderer.get_wire()


@pytest.mark.parametrize("serial", [0, 1, 45, 255, 256, 2**24 - 1, 2**24, 2026120201,
                                    2**31, 2**32 - 1])
@pytest.mark.parametrize(("mname", "rname"), [
    ("ns1.ha.example.", "hostmaster.ha.example."),  # compressible against the owner
    ("ns.other.test.", "admin.other.test."),  # not compressible
    (".", "."),  # root names: a single zero byte each
])
@pytest.mark.parametrize("compress", [True, False])
def test_the_serial_is_read_whatever_the_names(serial, mname, rname, compress):
    query = dns.message.make_query(ZONE, dns.rdatatype.SOA)
    wire = query.to_wire()
    data = reply(query, serial, mname, rname, compress)
    assert parse_soa_serial(data, wire) == (True, serial)


def test_replies_that_are_not_a_serial():
    query = dns.message.make_query(ZONE, dns.rdatatype.SOA)
    wire = query.to_wire()
    other = dns.message.make_query(ZONE, dns.rdatatype.SOA)
    assert parse_soa_serial(reply(other, 7, "a.", "b."), wire)[0] is (other.id == query.id)
    servfail = dns.message.make_response(query)
    servfail.set_rcode(dns.rcode.SERVFAIL)
    assert parse_soa_serial(servfail.to_wire(), wire) == (True, None)
    assert parse_soa_serial(wire, wire) == (False, None)  # a query, not a reply
    cut = reply(query, 7, "a.", "b.")[:-18]  # ends inside the serial
    assert parse_soa_serial(cut, wire) == (True, None)


def test_serial_arithmetic():
    assert serial_lt(1, 2) and not serial_lt(2, 1) and not serial_lt(5, 5)
    assert serial_lt(2**32 - 1, 0)  # a wrap is newer
    assert not serial_lt(0, 2**31) and not serial_lt(2**31, 0)  # undefined: neither
