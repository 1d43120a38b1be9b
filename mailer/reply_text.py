"""The text a person wrote on top of an emailed reply, ready to post into a conversation.

mail-parser-reply cuts quoted history, "On … wrote:" headers, Outlook header blocks and
signatures; this module picks and decodes the body, turns HTML into text, and bounds the work
done for a message that anyone able to send email can write.
"""

from __future__ import annotations

import codecs
import contextlib
import re
from email.message import EmailMessage, Message
from html.parser import HTMLParser

from mailparser_reply import EmailMessage as ParsedBody

# Languages whose reply headers and signatures are cut. Not all the library knows: its Danish,
# Swedish and Polish patterns cut English text ("Take care", "Do: …", a line starting "/").
LANGUAGES = ("en", "de", "fr", "es", "nl", "it", "ja")
MAX_PAYLOAD_BYTES = 2_000_000
MAX_PARSED_CHARS = 100_000
# The library's patterns backtrack polynomially in the length of a line (one 10,000-character
# line costs minutes) and of a run of blank lines: longer lines, never a header or a signature,
# are hidden from it behind placeholders, and blank runs are folded first.
MAX_PARSED_LINE = 200

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_BLANK_RUNS = re.compile(r"\n{3,}")
_SPACES = re.compile(" {2,}")
_PLACEHOLDER = re.compile(r"\x00(\d+)\x00")


class ReplyTextError(ValueError):
    """A reply whose text cannot be posted; `code` says why, the message is a sentence a
    person reads, and `text` is what was read of the reply (for "too_long": so that the
    answer can give it back)."""

    code: str  # one of: "no_text", "unreadable_charset", "empty", "too_long"

    def __init__(self, code: str, message: str, text: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.text = text


def reply_text(message: EmailMessage, *, max_chars: int) -> str:
    """The text the person wrote on top of their reply, ready to post: quoted history, "On …
    wrote:" blocks, Outlook header blocks and signatures removed, HTML-only mails converted to
    text, surrounding blank lines trimmed; at most `max_chars` characters."""
    part = message.get_body(preferencelist=("plain", "html"))
    if part is None:
        raise ReplyTextError("no_text", "The email has neither a plain-text nor an HTML body.")
    text = _decoded(part).replace("\r\n", "\n").replace("\r", "\n")
    if part.get_content_subtype() == "html":
        text = html_to_text(text)
    elif str(part.get_param("format", "")).lower() == "flowed":
        text = _unflowed(text, delsp=str(part.get_param("delsp", "")).lower() == "yes")
    text = _CONTROL.sub("", text)
    reply = _newest_reply(text[:MAX_PARSED_CHARS])
    if not reply:
        raise ReplyTextError(
            "empty",
            "The reply has no text of its own once quoted history and signatures are removed.",
        )
    if len(reply) > max_chars:
        # Past the parsed part the text was not read: its length is a lower bound then.
        length = f"{'at least ' if len(text) > MAX_PARSED_CHARS else ''}{len(reply):,}"
        raise ReplyTextError(
            "too_long",
            f"The reply is {length} characters long; the limit is {max_chars:,}.",
            text=reply,
        )
    return reply


def _decoded(part: Message) -> str:
    payload = part.get_payload(decode=True)
    data = payload[:MAX_PAYLOAD_BYTES] if isinstance(payload, bytes) else b""
    charset = part.get_content_charset() or "utf-8"
    try:
        if codecs.lookup(charset).name == "ascii":
            charset = "utf-8"  # 8-bit text labelled us-ascii is common; UTF-8 reads it all
        return data.decode(charset, errors="replace")
    # LookupError: unknown, or not a text encoding ("base64"); UnicodeError: "undefined",
    # or a codec without errors="replace" ("idna"); ValueError: a NUL in the name.
    except (LookupError, UnicodeError, ValueError) as error:
        shown = "".join(c if c.isascii() and c.isprintable() else "?" for c in charset[:40])
        raise ReplyTextError(
            "unreadable_charset",
            f'The email is written in a character set this server cannot read ("{shown}").',
        ) from error


def _unflowed(text: str, *, delsp: bool) -> str:
    """format=flowed (RFC 3676, Thunderbird's and Apple Mail's plain text) unwrapped: a line
    ending in a space goes on with the next, as the sender typed it. Quoted lines are left
    as they are: they are dropped, or read by the library as a quote header."""
    lines: list[str] = []
    pieces: list[str] = []  # of the line being joined: joined once, not copied per piece
    for line in text.split("\n"):
        if line.startswith(">"):
            if pieces:
                lines.append("".join(pieces))
                pieces = []
            lines.append(line)
            continue
        line = line.removeprefix(" ")  # space-stuffed
        flowing = line.endswith(" ") and line != "-- "  # "-- " starts a signature
        pieces.append(line[:-1] if flowing and delsp else line)
        if not flowing:
            lines.append("".join(pieces))
            pieces = []
    if pieces:
        lines.append("".join(pieces))
    return "\n".join(lines)


def _newest_reply(text: str) -> str:
    # The library strips every line too; doing it here keeps the placeholders whole lines.
    lines = [line.strip() for line in text.split("\n")]
    hidden: list[str] = []
    for number, line in enumerate(lines):
        if len(line) > MAX_PARSED_LINE:
            # NUL cannot occur in the text (control characters are removed before).
            lines[number] = f"\x00{len(hidden)}\x00"
            hidden.append(line)
    folded = _BLANK_RUNS.sub("\n\n", "\n".join(lines))
    parsed = ParsedBody(text=folded, languages=list(LANGUAGES), keep_hyphen_lists=True)
    newest = parsed.read().replies[0]
    if newest.headers:
        return ""  # the text starts with a quote header: nothing was written above it
    body = _PLACEHOLDER.sub(lambda found: hidden[int(found.group(1))], str(newest.body))
    lines = _without_quote_header(body.split("\n"))
    # Inline quotes ("> …") the library keeps are not the person's text.
    kept = "\n".join(line for line in lines if not line.startswith(">"))
    return _BLANK_RUNS.sub("\n\n", kept).strip()


def _without_quote_header(lines: list[str]) -> list[str]:
    """The lines without the header of a quote the library left at the end: some clients'
    "… wrote:" lines it does not know (Gmail's Spanish and Dutch ones, a French one wrapped
    over two lines). That header is the paragraph just above the quote, ending in ":"."""
    end = len(lines)
    while end and (not lines[end - 1] or lines[end - 1].startswith(">")):
        end -= 1
    if not 0 < end < len(lines) or not lines[end - 1].endswith(":"):
        return lines  # no quote at the end, nothing above it, or no header above it
    start = end - 1
    while start and lines[start - 1] and end - start < 3:
        start -= 1
    if start and lines[start - 1]:
        return lines  # a longer paragraph: the person's own words
    return lines[:start]


def html_to_text(html: str) -> str:
    """Readable plain text of an HTML mail body: <head>, <style>, <script>, <title> and quoted
    history dropped, block elements as line breaks, list items as "- …", entities decoded,
    runs of blank lines collapsed to one, lines right-trimmed."""
    parser = _TextParser()
    # AssertionError is html.parser's answer to some malformed declarations ("<![x]>"): the
    # text before is kept. The trailing newline lets a last "&…" be read as text rather than
    # awaited. close() is not called: it re-scans the rest of the input for every unterminated
    # "<", quadratic on hostile input, and would only add text after an unterminated tag.
    with contextlib.suppress(AssertionError):
        parser.feed(html + "\n")
    lines = _SPACES.sub(" ", "".join(parser.out)).split("\n")
    text = "\n".join(line.strip(" ").replace("\xa0", " ").rstrip() for line in lines)
    return _BLANK_RUNS.sub("\n\n", text).strip("\n")


_DROPPED = frozenset({"head", "style", "script", "title", "blockquote"})
_QUOTE_CLASSES = frozenset({"gmail_quote", "gmail_quote_container", "yahoo_quoted"})
# Outlook's reply header and what it puts before it: the rest of the mail is quoted history.
_CUT_IDS = frozenset({"divRplyFwdMsg", "appendonsend", "stopSpelling"})
_PARAGRAPHS = frozenset({"p", "h1", "h2", "h3", "h4", "h5", "h6"})
_LINES = frozenset(
    {"div", "li", "tr", "hr", "ul", "ol", "table", "pre", "dl", "dt", "dd", "section"}
    | {"article", "header", "footer", "address", "center"}
)
_WHITESPACE = str.maketrans("\t\n\r\f", "    ")


class _TextParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.breaks = 2  # line breaks since the last text; the start counts as a paragraph
        self.skipping: str | None = None  # the tag of the dropped element we are inside
        self.depth = 0  # of nested elements with that tag
        self.pre = 0
        self.bullet = False
        self.done = False

    def _newline(self, at_least: int = 1) -> None:
        while self.breaks < at_least:
            self.out.append("\n")
            self.breaks += 1

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self.done:
            return
        if self.skipping is not None:
            if tag == self.skipping:
                self.depth += 1
            elif tag == "body" and self.skipping == "head":
                self.skipping = None  # an unclosed <head>
            return
        values = dict(attrs)
        if values.get("id") in _CUT_IDS:
            self.done = True
            return
        quote = not _QUOTE_CLASSES.isdisjoint((values.get("class") or "").split())
        if tag in _DROPPED or quote or (values.get("id") or "").startswith("yahoo_quoted"):
            self.skipping, self.depth = tag, 1
            self._newline()
        elif tag == "br":
            self.out.append("\n")
            self.breaks += 1
        elif tag in _PARAGRAPHS:
            self._newline(2)
        elif tag in _LINES:
            self._newline()
            if tag == "li":
                self.bullet = True
            elif tag == "pre":
                self.pre += 1
        elif tag in ("td", "th") and not self.breaks:
            self.out.append(" ")

    def handle_endtag(self, tag: str) -> None:
        if self.done:
            return
        if self.skipping is not None:
            if tag == self.skipping:
                self.depth -= 1
                if not self.depth:
                    self.skipping = None
            return
        if tag in _PARAGRAPHS:
            self._newline(2)
        elif tag in _LINES:
            self._newline()
            if tag == "pre":
                self.pre = max(0, self.pre - 1)

    def handle_data(self, data: str) -> None:
        if self.done or self.skipping is not None:
            return
        # Spaces in <pre> become no-break ones, which survive the collapsing and trimming.
        data = data.replace(" ", "\xa0") if self.pre else data.translate(_WHITESPACE)
        if data and not data.isspace():
            if self.bullet:  # written before the item's text, after any block inside the <li>
                self.out.append("- ")
                self.bullet = False
            self.breaks = 0
        self.out.append(data)
