"""Raw replies to an alert email, as real mail clients write them, for the reply-by-email
tests: `load_reply("gmail", sender=..., to=..., message_id=...)` gives the bytes an SMTP server
would receive, and EXPECTED the text that mailer.reply_text.reply_text makes of each one that
posts (quoted_only and unknown_charset do not)."""

from __future__ import annotations

from pathlib import Path

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "replies"


def load_reply(name: str, *, sender: str, to: str, message_id: str) -> bytes:
    """The raw fixture `name` ("gmail", …) with its placeholders filled in; line ends as
    written."""
    raw = (FIXTURES / f"{name}.eml").read_bytes()
    for placeholder, value in (("%FROM%", sender), ("%TO%", to), ("%MESSAGE_ID%", message_id)):
        raw = raw.replace(placeholder.encode(), value.encode())
    return raw


EXPECTED: dict[str, str] = {
    "gmail": "Sure \u2014 attaching it tomorrow. Merci, Zo\u00eb.",
    "outlook": (
        "Hi Dana,\n\n"
        "I\u2019ll send Chris\u2019s updated CV by Friday \u2013 he\u2019s adding his caf\u00e9"
        " management role."
    ),
    "apple_mail": "Yes, Tuesday works.",
    "html_only": (
        "Hi Dana,\n\n"
        "Thanks & sorry for the delay: Chris's CV is nearly ready. It now covers his"
        " r\u00e9sum\u00e9 highlights:\n\n"
        "- caf\u00e9 management (2019 \u2013 2023)\n"
        "- barista training <certified>\n\n"
        "I\u2019ll send it on Tuesday.\n"
        "Ann"
    ),
    "latin1": (
        "Hallo Dana,\n\n"
        "ja, der aktualisierte Lebenslauf kommt morgen fr\u00fch - ich erg\u00e4nze gerade noch"
        " die letzte Station."
    ),
    "iso2022jp": (
        "\u30c0\u30ca\u3055\u3093\n\n"  # ダナさん
        "\u4e86\u89e3\u3057\u307e\u3057\u305f\u3002"  # 了解しました。
        "\u706b\u66dc\u65e5\u3067\u5927\u4e08\u592b\u3067\u3059\u3002\n"  # 火曜日で大丈夫です。
        # 履歴書は明日お送りします。
        "\u5c65\u6b74\u66f8\u306f\u660e\u65e5\u304a\u9001\u308a\u3057\u307e\u3059\u3002"
    ),
    "with_attachment": "Here is Chris's updated CV, as promised.",
    "auto_reply": (
        "Thank you for your message. I am out of the office until Monday, 7 December 2026, with"
        " limited access to email.\n\n"
        "For urgent matters about candidates, please contact recruiting@talentco.example.\n\n"
        "Ann Agent\n"
        "TalentCo | Senior Recruiter"
    ),
}
