"""The zone-file reader the DKIM test trusts to find the published key."""

from dnszone import dkim_keys, records, txt_value


def test_parses_owner_relative_names_and_groups():
    zone = (
        "$ORIGIN lab.example.\n"
        "@ 3600 IN MX 10 mail.lab.example. ; the MX\n"
        's1._domainkey 3600 IN TXT ( "v=DKIM1; k=rsa; "\n'
        '   "p=AB;CD" )\n'
        'x.lab.example. IN 300 TXT "a" "b"\n'
    )
    recs = records(zone)
    assert recs[0] == ("lab.example.", "MX", ["10", "mail.lab.example."])
    assert dkim_keys(zone) == {"s1._domainkey.lab.example.": "v=DKIM1; k=rsa; p=AB;CD"}
    assert txt_value(recs[2][2]) == "ab"
