"""AM_LINK_TEMPLATE and AM_DEMO, read from the environment."""

from __future__ import annotations

import pytest

from server.settings import ConfigError, Settings

BASE = {"AM_SECRET": "s" * 32, "AM_SERVICE_TOKEN": "t" * 16}


def settings(**env: str) -> Settings:
    return Settings.from_env(BASE | env)


def test_links_go_to_this_servers_candidate_page_by_default() -> None:
    s = settings(AM_PUBLIC_URL="https://messaging.acme.example/")
    assert s.link("c1", 7, 42) == (
        "https://messaging.acme.example/candidates/c1?thread=7&message=42"
    )


def test_links_follow_the_template_with_the_candidate_id_quoted() -> None:
    template = "https://ats.acme.example/people/{candidate}#conversation-{thread}-{message}"
    s = settings(AM_LINK_TEMPLATE=template)
    # A host id may hold characters that mean something in a URL: it stays one path segment.
    assert s.link("c/1 x", 7, 42) == "https://ats.acme.example/people/c%2F1%20x#conversation-7-42"


@pytest.mark.parametrize(
    "template",
    [
        "https://ats.example/{candidate}/{user}",  # a field it does not know
        "https://ats.example/{0}",  # a positional field
        "https://ats.example/{}",  # an empty one
        "https://ats.example/{candidate",  # not closed
        "ftp://ats.example/{candidate}",  # not a web link
        "/candidates/{candidate}",  # no host
    ],
)
def test_a_template_it_cannot_fill_into_a_web_link_is_refused(template: str) -> None:
    with pytest.raises(ConfigError, match="AM_LINK_TEMPLATE must be an http"):
        settings(AM_LINK_TEMPLATE=template)


@pytest.mark.parametrize(
    ("raw", "demo"), [("", False), ("0", False), ("no", False), ("1", True), ("true", True)]
)
def test_demo_mode_is_asked_for_explicitly(raw: str, demo: bool) -> None:
    assert settings(AM_DEMO=raw).demo is demo


def test_an_unreadable_demo_flag_is_refused() -> None:
    with pytest.raises(ConfigError, match="AM_DEMO must be 1 or 0"):
        settings(AM_DEMO="maybe")
