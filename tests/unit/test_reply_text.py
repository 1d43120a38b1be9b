"""mailer.reply_text: the text of an emailed reply, from real mail clients' messages
(tests/fixtures/replies) and from hostile or broken ones."""

from __future__ import annotations

import base64
import email
import email.policy
from email.message import EmailMessage

import pytest

from mailer.reply_text import (
    MAX_PARSED_CHARS,
    MAX_PARSED_LINE,
    ReplyTextError,
    html_to_text,
    reply_text,
)
from tests.support.reply_fixtures import EXPECTED, FIXTURES, load_reply

SENDER = "Ann Agent <ann@talentco.example>"
REPLY_ADDRESS = '"Conversation about Chris Candidate" <reply+c1.t3.k9@reply.messaging.example>'
GMAIL_HEADER = "On Tue, Dec 1, 2026 at 3:04 PM Agency Messaging <\nalerts@messaging.example> wrote:"
QUOTE = "> Hi Ann Agent,\n>\n> Could you send the updated CV?\n"


def parse(raw: bytes) -> EmailMessage:
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def fixture(name: str, line_ends: str = "as written") -> EmailMessage:
    raw = load_reply(name, sender=SENDER, to=REPLY_ADDRESS, message_id="<r-1@talentco.example>")
    if line_ends != "as written":
        raw = raw.replace(b"\r\n", b"\n")
    if line_ends == "CRLF":
        raw = raw.replace(b"\n", b"\r\n")
    return parse(raw)


def plain(body: str, *, charset: str = "utf-8", params: str = "") -> EmailMessage:
    """A text/plain mail whose body is carried in base64, so that every byte arrives as is."""
    encoded = base64.encodebytes(body.encode("utf-8")).decode("ascii")
    return parse(
        (
            f"From: {SENDER}\nSubject: Re: New message\nMIME-Version: 1.0\n"
            f'Content-Type: text/plain; charset="{charset}"{params}\n'
            f"Content-Transfer-Encoding: base64\n\n{encoded}"
        ).encode()
    )


def html_mail(html: str) -> EmailMessage:
    encoded = base64.encodebytes(html.encode("utf-8")).decode("ascii")
    return parse(
        (
            f"From: {SENDER}\nMIME-Version: 1.0\nContent-Type: text/html; charset=utf-8\n"
            f"Content-Transfer-Encoding: base64\n\n{encoded}"
        ).encode()
    )


def error_of(message: EmailMessage, max_chars: int = 4000) -> ReplyTextError:
    with pytest.raises(ReplyTextError) as caught:
        reply_text(message, max_chars=max_chars)
    return caught.value


# --- the fixtures -----------------------------------------------------------------------


def test_every_fixture_is_covered() -> None:
    names = {path.stem for path in FIXTURES.glob("*.eml")}
    assert names == set(EXPECTED) | {"quoted_only", "unknown_charset"}
    for path in FIXTURES.glob("*.eml"):
        head = path.read_bytes().split(b"\n\n", 1)[0].split(b"\r\n\r\n", 1)[0]
        for header in (b"From: %FROM%", b"To: %TO%", b": %MESSAGE_ID%", b"In-Reply-To:"):
            assert header in head, (path.name, header)


def test_fixtures_come_with_both_line_ends() -> None:
    crlf = {path.stem for path in FIXTURES.glob("*.eml") if b"\r\n" in path.read_bytes()}
    assert {"gmail", "outlook"} <= crlf
    assert {"apple_mail", "latin1"}.isdisjoint(crlf)


def test_placeholders_are_filled_in() -> None:
    raw = load_reply("gmail", sender=SENDER, to=REPLY_ADDRESS, message_id="<r-7@example>")
    assert b"%FROM%" not in raw and b"%TO%" not in raw and b"%MESSAGE_ID%" not in raw
    message = parse(raw)
    assert message["From"].addresses[0].addr_spec == "ann@talentco.example"
    assert message["To"].addresses[0].addr_spec == "reply+c1.t3.k9@reply.messaging.example"
    assert message["Message-ID"] == "<r-7@example>"
    assert message["In-Reply-To"] == "<alert-12@messaging.example>"


@pytest.mark.parametrize("line_ends", ["as written", "LF", "CRLF"])
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture_gives_the_expected_text(name: str, line_ends: str) -> None:
    assert reply_text(fixture(name, line_ends), max_chars=4000) == EXPECTED[name]


@pytest.mark.parametrize(
    "name", ["gmail", "outlook", "apple_mail", "with_attachment", "auto_reply"]
)
def test_the_html_alternative_gives_the_same_text(name: str) -> None:
    message = fixture(name)
    text_part = message.get_body(preferencelist=("plain",))
    assert text_part is not None
    text_part["Content-Disposition"] = "attachment"  # get_body now picks the HTML part
    html_part = message.get_body(preferencelist=("plain", "html"))
    assert html_part is not None and html_part.get_content_type() == "text/html"
    assert reply_text(message, max_chars=4000) == EXPECTED[name]


def test_the_limit_counts_the_reply_only() -> None:
    text = EXPECTED["outlook"]
    assert reply_text(fixture("outlook"), max_chars=len(text)) == text
    error = error_of(fixture("outlook"), max_chars=len(text) - 1)
    assert error.code == "too_long"
    assert str(error) == (
        f"The reply is {len(text)} characters long; the limit is {len(text) - 1}."
    )


def test_a_mail_with_nothing_but_the_quote_is_empty() -> None:
    error = error_of(fixture("quoted_only"))
    assert error.code == "empty"
    assert isinstance(error, ValueError)
    assert str(error).endswith("once quoted history and signatures are removed.")


def test_an_unknown_charset_is_named() -> None:
    error = error_of(fixture("unknown_charset"))
    assert error.code == "unreadable_charset"
    assert '"x-unknown-charset"' in str(error)


# --- choosing and decoding the body -----------------------------------------------------


def test_an_image_only_mail_has_no_text() -> None:
    png = base64.encodebytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64).decode("ascii")
    message = parse(
        (
            "From: a@example.com\nMIME-Version: 1.0\nContent-Type: image/png\n"
            f"Content-Transfer-Encoding: base64\n\n{png}"
        ).encode()
    )
    error = error_of(message)
    assert error.code == "no_text"
    assert str(error) == "The email has neither a plain-text nor an HTML body."


def test_a_text_attachment_is_not_the_body() -> None:
    message = parse(
        b"From: a@example.com\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=XX\n\n"
        b"--XX\nContent-Type: text/plain\nContent-Disposition: attachment; filename=cv.txt\n\n"
        b"Chris Candidate, CV\n--XX--\n"
    )
    assert error_of(message).code == "no_text"


def test_plain_text_wins_over_html() -> None:
    message = parse(
        b"From: a@example.com\nMIME-Version: 1.0\n"
        b"Content-Type: multipart/alternative; boundary=XX\n\n"
        b"--XX\nContent-Type: text/html\n\n<p>From the HTML part</p>\n"
        b"--XX\nContent-Type: text/plain\n\nFrom the plain part\n--XX--\n"
    )
    assert reply_text(message, max_chars=100) == "From the plain part"


def test_a_large_attachment_is_not_read() -> None:
    pdf = base64.encodebytes(b"%PDF-1.4\n" + b"\xff" * 10_000_000).decode("ascii")
    message = parse(
        (
            "From: a@example.com\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=XX\n\n"
            "--XX\nContent-Type: text/plain; charset=utf-8\n\nThe CV is attached.\n\n"
            f"{GMAIL_HEADER}\n\n{QUOTE}"
            "--XX\nContent-Type: application/pdf\n"
            "Content-Disposition: attachment; filename=cv.pdf\n"
            f"Content-Transfer-Encoding: base64\n\n{pdf}--XX--\n"
        ).encode()
    )
    assert reply_text(message, max_chars=100) == "The CV is attached."


@pytest.mark.parametrize("charset", ["base64", "rot13", "undefined", "idna", "utf-9"])
def test_a_charset_that_is_no_text_encoding_is_unreadable(charset: str) -> None:
    error = error_of(plain("Fine by me.", charset=charset))
    assert error.code == "unreadable_charset"
    assert f'"{charset}"' in str(error)


def test_the_named_charset_is_bounded_and_printable() -> None:
    error = error_of(plain("Fine by me.", charset="x-\x7f" + "z" * 100))
    assert error.code == "unreadable_charset"
    assert str(error).split('"')[1] == "x-?" + "z" * 37


def test_a_charset_name_that_is_not_ascii_is_no_charset() -> None:
    # RFC 2046: charset names are ASCII; email's get_content_charset() ignores others.
    assert reply_text(plain("Fine by me.", charset="x-" + "é" * 10), max_chars=100) == (
        "Fine by me."
    )


def test_us_ascii_is_read_as_utf8() -> None:
    assert reply_text(plain("Zoë says ok", charset="us-ascii"), max_chars=100) == "Zoë says ok"
    assert reply_text(plain("Zoë says ok", charset="ANSI_X3.4-1968"), max_chars=100) == (
        "Zoë says ok"
    )


def test_a_mail_without_charset_is_read_as_utf8() -> None:
    message = parse("From: a@example.com\nContent-Type: text/plain\n\nZoë says ok\n".encode())
    assert reply_text(message, max_chars=100) == "Zoë says ok"


def test_bytes_the_charset_cannot_read_are_replaced() -> None:
    message = parse(
        b"From: a@example.com\nContent-Type: text/plain; charset=utf-8\n\nok \xff\xfe\n"
    )
    assert reply_text(message, max_chars=100) == "ok \ufffd\ufffd"


def test_quoted_printable_and_windows_1252() -> None:
    message = parse(
        b"From: a@example.com\nContent-Type: text/plain; charset=windows-1252\n"
        b"Content-Transfer-Encoding: quoted-printable\n\n"
        b"It=92s the caf=E9 role =96 a long line that is wrapped by the encoder, which must=\n"
        b" not show.\n"
    )
    assert reply_text(message, max_chars=200) == (
        "It\u2019s the café role \u2013 a long line that is wrapped by the encoder, which must "
        "not show."
    )


def test_only_the_first_two_million_bytes_are_decoded() -> None:
    head = "<p>Hi</p>"
    # Whitespace, which the HTML conversion collapses, up to an "é" cut in half by the bound.
    html = head + " " * (2_000_000 - len(head) - 1) + "é" + "<p>NEVER SEEN</p>"
    assert reply_text(html_mail(html), max_chars=100) == "Hi\n\n\ufffd"


def test_a_reply_longer_than_the_parsed_part_is_too_long() -> None:
    error = error_of(plain("x" * 150_000), max_chars=10)
    assert error.code == "too_long"
    assert str(error) == "The reply is at least 100,000 characters long; the limit is 10."


def test_the_text_past_the_parsed_part_is_not_read() -> None:
    body = "Fine.\n" + "." * (MAX_PARSED_CHARS - len("Fine.\n")) + "\nNEVER SEEN"
    assert reply_text(plain(body), max_chars=MAX_PARSED_CHARS).startswith("Fine.\n....")
    assert "NEVER" not in reply_text(plain(body), max_chars=MAX_PARSED_CHARS)


# --- line ends, control characters, quotes ----------------------------------------------


@pytest.mark.parametrize("end", ["\n", "\r\n", "\r"])
def test_line_ends(end: str) -> None:
    body = f"Line one\nLine two\n\n\n\nLine three\n\n{GMAIL_HEADER}\n\n{QUOTE}"
    assert reply_text(plain(body.replace("\n", end)), max_chars=100) == (
        "Line one\nLine two\n\nLine three"
    )


def test_control_characters_are_removed() -> None:
    body = "Se\x00nd\x07 it\x1b[31m\tnow\x7f\x85\x9f\x0b\x0c please\n\nthanks"
    assert reply_text(plain(body), max_chars=100) == "Send it[31m\tnow please\n\nthanks"


def test_quoted_lines_kept_by_the_library_are_removed() -> None:
    body = "> Could you send the updated CV?\nYes, tomorrow.\n> And the references?\nThose too."
    assert reply_text(plain(body), max_chars=100) == "Yes, tomorrow.\nThose too."


def test_a_wrapped_gmail_header_is_cut() -> None:
    body = f"Sure, tomorrow.\n\n{GMAIL_HEADER}\n\n{QUOTE}"
    assert reply_text(plain(body), max_chars=100) == "Sure, tomorrow."


@pytest.mark.parametrize(
    "header",
    [
        "El mar, 1 dic 2026 a las 15:04, Agency Messaging (<\nalerts@messaging.example>) escribió:",
        "Op di 1 dec 2026 om 15:04 schreef Agency Messaging <alerts@messaging.example>:",
        "Le mar. 1 déc. 2026 à 15:04, Agency Messaging <alerts@messaging.example> a\nécrit :",
        "Am Di., 1. Dez. 2026 um 15:04 Uhr schrieb Agency Messaging <\nalerts@messaging.example>:",
        "Il giorno mar 1 dic 2026 alle ore 15:04 Agency Messaging <\n"
        "alerts@messaging.example> ha scritto:",
    ],
)
def test_quote_headers_in_other_languages_are_cut(header: str) -> None:
    body = f"Claro, mañana.\n\n{header}\n\n{QUOTE}"
    assert reply_text(plain(body), max_chars=100) == "Claro, mañana."


def test_a_long_paragraph_above_a_quote_is_kept() -> None:
    body = "I read it.\n\nOne\ntwo\nthree\nfour, as Dana asked:\n> Could you send the CV?\n"
    assert (
        reply_text(plain(body), max_chars=100)
        == "I read it.\n\nOne\ntwo\nthree\nfour, as Dana asked:"
    )


def test_outlook_header_block_and_signature_are_cut() -> None:
    body = (
        "Done.\n\nKind regards,\nAnn\n\n________________________________\n"
        "From: Agency Messaging <alerts@messaging.example>\nSent: Tuesday, December 1, 2026\n"
        "To: Ann Agent\nSubject: New message\n\nHi Ann Agent,\n"
    )
    assert reply_text(plain(body), max_chars=100) == "Done."


def test_an_outlook_header_on_top_is_empty() -> None:
    # Nothing above the header block: the unquoted text below it is the original, not a reply.
    body = (
        "From: Agency Messaging <alerts@messaging.example>\nSent: Tuesday, December 1, 2026\n"
        "To: Ann Agent\nSubject: New message\n\nHi Ann Agent,\n\nYou have 1 unread message.\n"
    )
    assert error_of(plain(body)).code == "empty"


def test_a_dash_list_stays_and_a_dash_signature_goes() -> None:
    body = "Two things:\n- the CV\n- the references\n\n-- \nAnn Agent\nTalentCo"
    assert reply_text(plain(body), max_chars=100) == "Two things:\n- the CV\n- the references"


def test_sent_from_my_phone_alone_is_empty() -> None:
    body = f"Sent from my iPhone\n\n{GMAIL_HEADER}\n\n{QUOTE}"
    assert error_of(plain(body)).code == "empty"


def test_blank_and_whitespace_only_bodies_are_empty() -> None:
    assert error_of(plain(" \n\t\n\x00\n")).code == "empty"
    assert error_of(html_mail("<html><body><p>&nbsp;</p><br></body></html>")).code == "empty"


def test_format_flowed_is_unwrapped() -> None:
    body = "This line was wrapped \nby the client.\n-- \nAnn\n"
    assert reply_text(plain(body, params="; format=flowed"), max_chars=100) == (
        "This line was wrapped by the client."
    )
    # delsp=yes: the space that marks a soft break is not the person's.
    body = "Zusammen ge \nschrieben  \nund getrennt.\n"
    assert reply_text(plain(body, params="; format=flowed; delsp=yes"), max_chars=100) == (
        "Zusammen geschrieben und getrennt."
    )
    # Without format=flowed a trailing space is no continuation.
    assert reply_text(plain("One \nTwo"), max_chars=100) == "One\nTwo"


def test_a_huge_quote_under_a_one_line_reply() -> None:
    quote = "> quoted history line of moderate length, again and again\n" * 90_000
    body = f"One line reply.\n\n{GMAIL_HEADER}\n\n{quote}"
    assert len(body) > 5_000_000
    assert reply_text(plain(body), max_chars=100) == "One line reply."


def test_a_huge_unquoted_outlook_history_under_a_reply() -> None:
    history = "Hi Ann Agent,\n\nYou have 1 unread message about Chris Candidate.\n\n" * 60_000
    body = (
        "Tuesday works.\n\n________________________________\nFrom: Agency Messaging\n"
        f"Sent: Tuesday, December 1, 2026 3:04 PM\nTo: Ann Agent\n\n{history}"
    )
    assert reply_text(plain(body), max_chars=100) == "Tuesday works."


def test_long_lines_come_back_whole() -> None:
    long_line = "Chris has the experience we need " * 10
    assert len(long_line) > MAX_PARSED_LINE
    body = f"Hi Dana,\n\n{long_line}\n\n{GMAIL_HEADER}\n\n{QUOTE}"
    assert reply_text(plain(body), max_chars=1000) == f"Hi Dana,\n\n{long_line.strip()}"


@pytest.mark.parametrize(
    "line",
    [
        "Am x schrieb y " * 6_000,  # the German quote header pattern: cubic in a line's length
        "On a " * 18_000,
        "Op a " * 18_000,
    ],
)
def test_hostile_long_lines_are_not_fed_to_the_patterns(line: str) -> None:
    # Fed to the library as they are, each of these takes from minutes to hours.
    assert reply_text(plain(f"Hi\n{line}"), max_chars=MAX_PARSED_CHARS) == f"Hi\n{line.strip()}"


def test_hostile_runs_of_blank_lines() -> None:
    body = "Hi\n" + "\n" * 99_000 + "there" + " \n" * 50_000
    assert reply_text(plain(body), max_chars=100) == "Hi\n\nthere"


# --- HTML -------------------------------------------------------------------------------


def test_an_html_only_mail_drops_head_style_script_and_quote() -> None:
    html = """<html><head><title>Re: New message</title>
<style>p { color: red; }</style><script>alert("x")</script></head>
<body><p>Tuesday works &amp; Wednesday too.</p>
<script type="text/javascript">document.write("<p>nope</p>")</script>
<div>Ann</div>
<blockquote type="cite">Hi Ann Agent, could you send the CV?</blockquote>
</body></html>"""
    assert reply_text(html_mail(html), max_chars=100) == "Tuesday works & Wednesday too.\n\nAnn"


def test_html_lists_breaks_and_entities() -> None:
    html = (
        "<div>Two things&nbsp;to&#160;do:<ul><li>the <b>CV</b></li>\n<li>the caf&eacute;"
        " &lt;role&gt;</li></ul>Line one<br>Line two<br><br><br><br>Line three</div>"
        "<ol><li><div>nested block</div></li></ol><p>&#8217;Bye &mdash; &#x1F600;</p>"
    )
    assert html_to_text(html) == (
        "Two things to do:\n- the CV\n- the café <role>\nLine one\nLine two\n\nLine three\n"
        "- nested block\n\n\u2019Bye \u2014 \U0001f600"
    )


def test_html_whitespace_collapses_and_lines_are_right_trimmed() -> None:
    html = "<p>\n   One\n   two   \t three   </p>\n\n\n<div>  four&nbsp;&nbsp;</div>"
    assert html_to_text(html) == "One two three\n\nfour"


def test_html_paragraphs_headings_rows_and_rules() -> None:
    html = (
        "<h1>Title</h1><p>First</p><p>Second</p><table><tr><td>a</td><td>b</td></tr>"
        "<tr><th>c</th><td>d</td></tr></table>x<hr>y"
    )
    assert html_to_text(html) == "Title\n\nFirst\n\nSecond\n\na b\nc d\nx\ny"


def test_html_pre_keeps_its_lines() -> None:
    assert html_to_text("<p>See:</p><pre>  a  b\n    c</pre>end") == "See:\n\n  a  b\n    c\nend"


def test_outlook_reply_header_cuts_everything_after() -> None:
    html = (
        '<div>Yes.</div><div id="divRplyFwdMsg"><b>From:</b> Agency Messaging</div>'
        "<div>Hi Ann Agent,</div><p>The original</p>"
    )
    assert html_to_text(html) == "Yes."
    html = '<div>Yes.</div><div id="appendonsend"></div><hr tabindex="-1"><div>Old</div>'
    assert html_to_text(html) == "Yes."
    html = '<p>Yes.</p><hr id="stopSpelling">From: Agency Messaging<br>Sent: Tuesday'
    assert html_to_text(html) == "Yes."


def test_nested_blockquotes_are_dropped_and_what_follows_is_kept() -> None:
    html = (
        "<p>Top</p><blockquote type=cite>outer<blockquote>inner</blockquote>outer again"
        "<div>more</div></blockquote><p>Bottom</p>"
    )
    assert html_to_text(html) == "Top\n\nBottom"


@pytest.mark.parametrize(
    "quote",
    [
        '<div class="gmail_quote">On Tue wrote:<div><div>x</div></div>old</div>',
        '<div class="gmail_quote gmail_quote_container"><div class="gmail_attr">On</div></div>',
        '<div class="yahoo_quoted" id="yahoo_quoted_4411"><div>On Tuesday</div></div>',
        '<div id="yahoo_quoted_4411"><div>On Tuesday</div></div>',
    ],
)
def test_webmail_quote_containers_are_dropped(quote: str) -> None:
    assert html_to_text(f'<div dir="ltr">New text</div>{quote}<div>After</div>') == (
        "New text\nAfter"
    )


def test_an_unclosed_head_ends_at_the_body() -> None:
    assert html_to_text("<html><head><title>T</title><body><p>Visible</p>") == "Visible"


@pytest.mark.parametrize(
    ("html", "text"),
    [
        ("<p>before</p><![foo]><p>after</p>", "before"),  # html.parser raises on it
        ("<p>Call AT&T", "Call AT&T"),
        ("<p>text</p><a href='x", "text"),
        ("<p>text</p><!-- unterminated comment <p>hidden</p>", "text"),
        ("a < b and c > d", "a < b and c > d"),
    ],
)
def test_malformed_html(html: str, text: str) -> None:
    assert html_to_text(html) == text


@pytest.mark.parametrize(
    "junk", ["</" * 500_000, "<!" * 500_000, "<!--a>" * 150_000, "<a" * 500_000]
)
def test_hostile_html_is_read_in_one_pass(junk: str) -> None:
    # html.parser's close() takes minutes on each of these: it is not called.
    assert reply_text(html_mail(f"<p>Real text</p>{junk}"), max_chars=100) == "Real text"


def test_a_script_in_an_html_mail_is_not_text() -> None:
    html = '<body><script>var a = "<p>no</p>";</script><style>.x{}</style>Hello</body>'
    assert reply_text(html_mail(html), max_chars=100) == "Hello"
