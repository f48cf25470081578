"""The outbound address check shared by page reads and webhooks."""

from __future__ import annotations

import pytest

from crews import netguard
from jobs.settings import WebhookConfig
from jobs.worker.webhooks import _post


@pytest.mark.parametrize(
    ("address", "problem"),
    [
        ("127.0.0.1", "loopback address"),
        ("::1", "loopback address"),
        ("169.254.169.254", "link-local address"),
        ("10.0.0.7", "private address"),
        ("192.168.1.1", "private address"),
        ("100.64.0.1", "non-public address"),
        ("224.0.0.1", "multicast address"),
        ("0.0.0.0", "unspecified address"),
        ("::ffff:127.0.0.1", "loopback address"),
        ("fe80::1%eth0", "link-local address"),
        ("93.184.215.14", None),
        ("2606:4700::1111", None),
    ],
)
def test_address_problems(address: str, problem: str | None) -> None:
    assert netguard.address_problem(address) == problem


async def test_a_name_resolving_to_any_private_address_is_refused() -> None:
    async def resolver(host: str, port: int) -> list[str]:
        return ["93.184.215.14", "10.0.0.1"]  # one bad answer is enough to refuse

    with pytest.raises(netguard.Refused, match="private address"):
        await netguard.check("https://news.example/a", allow_private=False, resolve=resolver)
    allowed = await netguard.check("https://news.example/a", allow_private=True, resolve=resolver)
    assert allowed.address == "93.184.215.14"


async def test_the_request_goes_to_the_checked_address_with_the_original_host_and_sni() -> None:
    async def resolver(host: str, port: int) -> list[str]:
        return ["93.184.215.14"]

    target = await netguard.check("https://news.example:8443/a?b=1", allow_private=False, resolve=resolver)
    url, headers, extensions = target.pinned()
    assert url == "https://93.184.215.14:8443/a?b=1"
    assert headers == {"Host": "news.example:8443"} and extensions == {"sni_hostname": "news.example"}


@pytest.mark.parametrize("url", ["ftp://example.com/x", "file:///etc/passwd", "http:///nohost", "http://a:99999/"])
async def test_other_schemes_and_malformed_urls_are_refused(url: str) -> None:
    with pytest.raises(netguard.Refused):
        await netguard.check(url, allow_private=True)


async def test_a_webhook_is_checked_again_at_delivery() -> None:
    """A URL accepted at submit that now points at a private address is refused without connecting."""
    status, error = await _post(WebhookConfig(), "http://127.0.0.1:9/hook", {}, b"{}")
    assert status is None and error is not None and error.startswith("refused: ") and "loopback" in error
