"""The text normalisation Whisper is scored with (Radford et al. 2022, appendix C; openai-
whisper's EnglishTextNormalizer), in the part that decides most English error rates:
lower case; bracketed and parenthesised annotations and hesitations (um, uh, hmm) removed;
contractions spelled out; punctuation, symbols and diacritics removed; numbers written as
digits ("twenty one" and "21" both become 21, "seven." and "7" both 7, "oh" 0), but a lone
1 is written "one" ("no one", "1." and "one" all become one). Left out: British
to American spellings and currencies / ordinals ("first", "$5")."""

from __future__ import annotations

import re
import unicodedata

FILLERS = re.compile(r"\b(hmm|mm|mhm|mmm|uh|um)\b")
CONTRACTIONS = (
    (r"\bwon't\b", "will not"), (r"\bcan't\b", "can not"), (r"\blet's\b", "let us"),
    (r"\bain't\b", "aint"), (r"\by'all\b", "you all"), (r"\bwanna\b", "want to"),
    (r"\bgotta\b", "got to"), (r"\bgonna\b", "going to"), (r"\bma'am\b", "madam"),
    (r"\bmr\b", "mister "), (r"\bmrs\b", "missus "), (r"\bdr\b", "doctor "),
    (r"\bst\b", "saint "), (r"\bjr\b", "junior "), (r"\bsr\b", "senior "),
    (r"'d been\b", " had been"), (r"'s been\b", " has been"), (r"'s got\b", " has got"),
    (r"n't\b", " not"), (r"'re\b", " are"), (r"'s\b", " is"), (r"'d\b", " would"),
    (r"'ll\b", " will"), (r"'t\b", " not"), (r"'ve\b", " have"), (r"'m\b", " am"),
)  # fmt: skip
DIACRITICS = {"œ": "oe", "ø": "o", "æ": "ae", "ß": "ss", "đ": "d", "ð": "d", "þ": "th", "ł": "l"}
_ONES = "zero one two three four five six seven eight nine"
_TEENS = "ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen"
_TENS = "twenty thirty forty fifty sixty seventy eighty ninety"
ONES = {w: i for i, w in enumerate(_ONES.split())}
TEENS = {w: i + 10 for i, w in enumerate(_TEENS.split())}
TENS = {w: 10 * (i + 2) for i, w in enumerate(_TENS.split())}
ZEROS = ("o", "oh")  # read as "zero", as Whisper's normalizer reads them
SCALES = {"thousand": 1_000, "million": 1_000_000, "billion": 1_000_000_000}


def _plain(text: str) -> str:
    """Symbols, punctuation and marks -> spaces, diacritics dropped (NFKD), except the
    characters numbers keep (. % $)."""
    out = []
    for c in unicodedata.normalize("NFKD", text):
        if c in ".%$":
            out.append(c)
        elif c in DIACRITICS:
            out.append(DIACRITICS[c])
        elif unicodedata.category(c) == "Mn":
            continue
        else:
            out.append(" " if unicodedata.category(c)[0] in "MSP" else c)
    return "".join(out)


class _Number:
    """A number being read word by word: the whole so far and the group under a thousand."""

    def __init__(self) -> None:
        self.total, self.group, self.last, self.words = 0, 0, "", 0

    def takes(self, word: str) -> bool:
        """Whether `word` continues this number (else it starts a new one or is no number)."""
        group, last = self.group, self.last
        if word in ONES:
            return last in ("", "hundred", "scale") or (last == "tens" and group % 10 == 0)
        if word in TEENS or word in TENS:
            return last in ("", "hundred", "scale")
        if word == "hundred":
            return last in ("ones", "teens", "tens") and 0 < group < 100
        return word in SCALES and last in ("ones", "teens", "tens", "hundred")

    def add(self, word: str) -> None:
        self.words += 1
        if word in ONES or word in TEENS or word in TENS:
            self.group += ONES.get(word, TEENS.get(word, TENS.get(word, 0)))
            self.last = "ones" if word in ONES else "teens" if word in TEENS else "tens"
        elif word == "hundred":
            self.group, self.last = self.group * 100, "hundred"
        else:
            self.total, self.group, self.last = self.total + self.group * SCALES[word], 0, "scale"

    def text(self) -> str:
        return str(self.total + self.group)


def _is_number_word(word: str) -> bool:
    return word in ONES or word in TEENS or word in TENS


def numbers_as_digits(words: list[str]) -> list[str]:
    """Spelled numbers -> digits, as Whisper's normalizer writes them: "twenty one" -> "21",
    "three hundred and five" -> "305", numbers spoken one after the other run together
    ("seven eight" -> "78"), "oh" and "o" are zeros ("seven oh five" -> "705")."""
    words = ["zero" if word in ZEROS else word for word in words]
    out: list[str] = []
    number: _Number | None = None
    joined = False  # whether the number under way follows another one directly
    for i, word in enumerate(words):
        following = words[i + 1] if i + 1 < len(words) else ""
        if number is not None and word == "and" and number.last in ("hundred", "scale") \
                and number.takes(following):  # fmt: skip
            continue
        if number is not None and number.takes(word):
            number.add(word)
            continue
        if number is not None:
            _emit(out, number, joined)
            joined, number = _is_number_word(word), None
        if _is_number_word(word):
            number = _Number()
            number.add(word)
        else:
            out.append(word)
    if number is not None:
        _emit(out, number, joined)
    return out


def _emit(out: list[str], number: _Number, joined: bool) -> None:
    """Write `number`, run into the previous one when `joined`."""
    if joined:
        out[-1] += number.text()
    else:
        out.append(number.text())


def normalize_english(text: str) -> str:
    """Whisper's English normalisation (the part described above), for error rates."""
    s = text.lower()
    s = re.sub(r"[<\[][^>\]]*[>\]]", "", s)  # [annotations] and <tags>
    s = re.sub(r"\(([^)]+?)\)", "", s)  # (parenthesised remarks)
    s = FILLERS.sub("", s)
    s = re.sub(r"\s+'", "'", s)
    for pattern, replacement in CONTRACTIONS:
        s = re.sub(pattern, replacement, s)
    s = re.sub(r"(\d),(\d)", r"\1\2", s)  # 1,000 -> 1000
    s = re.sub(r"\.([^0-9]|$)", r" \1", s)  # periods but decimal points
    s = " ".join(numbers_as_digits(_plain(s).split()))
    s = re.sub(r"[.$]([^0-9]|$)", r" \1", s)  # what is left of . and $ outside numbers
    s = re.sub(r"([^0-9])%", r"\1 ", s)
    s = re.sub(r"\b1(s?)\b", r"one\1", s)  # a lone 1 as the word, as Whisper writes it
    return " ".join(s.split())
