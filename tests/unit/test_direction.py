from mattermail.milter.direction import Direction, direction, parse_networks

TRUSTED = parse_networks(["127.0.0.1/32", "10.0.0.0/8", "::1/128"])


def test_sasl_login_is_outbound_from_anywhere():
    assert direction("alice@lawfirm.test", "203.0.113.9", TRUSTED) is Direction.OUTBOUND


def test_trusted_network_is_outbound():
    assert direction(None, "10.1.2.3", TRUSTED) is Direction.OUTBOUND
    assert direction(None, "IPv6:::1", TRUSTED) is Direction.OUTBOUND


def test_untrusted_or_unknown_is_inbound():
    assert direction(None, "127.0.0.2", TRUSTED) is Direction.INBOUND
    assert direction("", "198.51.100.1", TRUSTED) is Direction.INBOUND
    assert direction(None, None, TRUSTED) is Direction.INBOUND
    assert direction(None, "garbage", TRUSTED) is Direction.INBOUND
