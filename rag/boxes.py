"""Evidence boxes: where on a cited page the answer's evidence is.

The answerer is asked to box what it cites, in Qwen2-VL's grounding convention: two corners
`(x1,y1),(x2,y2)` in 0-1000 coordinates of the page image it was shown (the whole stored page
image, scaled, so they map onto the stored image's width and height). It may write them as
Qwen2-VL's markup, `<|box_start|>(x1,y1),(x2,y2)<|box_end|>` (tied to the citation label before
it), or plainly right after a label: `[2](x1,y1),(x2,y2)`. Tokenizers that skip special tokens
turn the former into the latter. Boxes that are malformed, out of range or empty are dropped;
the markup never reaches users (`clean`, and `BoxFilter` while the text streams).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageDraw

from rag.prompt import LABELS

Box = tuple[int, int, int, int]  # (x1, y1, x2, y2), x1 < x2 and y1 < y2
SCALE = 1000  # Qwen2-VL's box coordinates run from 0 to 1000 across and down the image

# Every part is bounded, so a match has a bounded length and streaming can hold it back.
_NUM = r"[ \t]{0,3}(-?\d{1,6}(?:\.\d{1,6})?)[ \t]{0,3}"
_PAIR = rf"\({_NUM},{_NUM}\)"
_BOX = rf"{_PAIR}[ \t]{{0,3}},?[ \t]{{0,3}}{_PAIR}"
_BOX_RE = re.compile(_BOX)
# Boxes right after a label (their leading blanks are removed with them).
_PLAIN = re.compile(rf"(?:[ \t]{{0,3}}[,;]?[ \t]{{0,3}}{_BOX}){{1,4}}")
_PLAIN_MAX = 4 * 110  # longer than any `_PLAIN` match
_MARKUP = re.compile(r"<\|box_start\|>([^<]{0,120}?)<\|box_end\|>")
_MARKUP_MAX = 13 + 120 + 11
# Box and reference tokens left over (the text of `<|object_ref_start|>x<|object_ref_end|>` stays).
MARKERS = ("<|box_start|>", "<|box_end|>", "<|object_ref_start|>", "<|object_ref_end|>")
_STRAY = re.compile("|".join(re.escape(m) for m in MARKERS))
_BOX_CHARS = re.compile(r"[\d \t(),.;\-]*")
_OPEN_LABEL = re.compile(r"\[[\d \t,;]{0,40}\Z")


@dataclass(frozen=True)
class Parsed:
    text: str  # the answer as shown: box markup removed, labels kept
    boxes: dict[int, list[Box]] = field(default_factory=dict)  # label -> boxes, 0-1000 units


def _unit_box(numbers: Sequence[str]) -> Box | None:
    """Two corners in 0-1000 units, ordered; None when malformed, out of range or empty."""
    if any("." in n for n in numbers):  # the convention is integers: 0.5 is not "half"
        return None
    x1, y1, x2, y2 = (int(n) for n in numbers)
    if not all(0 <= v <= SCALE for v in (x1, y1, x2, y2)):
        return None
    x1, x2, y1, y2 = min(x1, x2), max(x1, x2), min(y1, y2), max(y1, y2)
    return (x1, y1, x2, y2) if x1 < x2 and y1 < y2 else None


def _boxes_in(text: str) -> list[Box]:
    return [b for m in _BOX_RE.findall(text) if (b := _unit_box(m)) is not None]


def parse(text: str, n_pages: int | None = None) -> Parsed:
    """The text without box markup, and the valid boxes tied to the label they follow (the
    last number of `[1, 3]`); labels outside 1..n_pages and boxes after no label are dropped."""
    labels = list(LABELS.finditer(text))
    spans: list[tuple[int, int, int | None, list[Box]]] = []  # start, end, label, boxes
    for label in labels:
        if plain := _PLAIN.match(text, label.end()):
            last = int(re.split(r"[,;]", label[1])[-1])
            spans.append((plain.start(), plain.end(), last, _boxes_in(plain[0])))
    for markup in _MARKUP.finditer(text):
        before = [m for m in labels if m.end() <= markup.start()]
        number = int(re.split(r"[,;]", before[-1][1])[-1]) if before else None
        content = markup[1].strip()
        valid = _PLAIN.fullmatch(content) is not None  # anything else inside is malformed
        end = markup.end()
        if markup.start() and text[markup.start() - 1] in " \t":  # "a <box> b": one blank
            end += len(text[end:]) - len(text[end:].lstrip(" \t"))
        spans.append((markup.start(), end, number, _boxes_in(content) if valid else []))
    for stray in _STRAY.finditer(text):
        spans.append((stray.start(), stray.end(), None, []))
    kept: list[str] = []
    boxes: dict[int, list[Box]] = {}
    at = 0
    for start, end, number, found in sorted(spans, key=lambda s: (s[0], -s[1])):
        if start < at:  # inside a span already removed
            continue
        kept.append(text[at:start])
        at = end
        if number is not None and (n_pages is None or 1 <= number <= n_pages):
            for box in found:
                if box not in boxes.setdefault(number, []):
                    boxes[number].append(box)
    kept.append(text[at:])
    return Parsed("".join(kept), {n: b for n, b in boxes.items() if b})


def clean(text: str) -> str:
    """The answer as users see it: without box markup."""
    return parse(text).text


def to_pixels(box: Box, size: tuple[int, int]) -> Box | None:
    """A 0-1000 box in pixels of an image of `size` (width, height); None when it covers
    less than a pixel across or down."""
    width, height = size
    x1, y1, x2, y2 = (
        round(v * s / SCALE) for v, s in zip(box, (width, height, width, height), strict=True)
    )
    return (x1, y1, x2, y2) if x2 > x1 and y2 > y1 else None


def page_boxes(boxes: Iterable[Box], size: tuple[int, int]) -> tuple[Box, ...]:
    """`boxes` (0-1000 units) in pixels of the page image of `size`, the empty ones dropped."""
    if size[0] < 1 or size[1] < 1:
        return ()
    return tuple(p for b in boxes if (p := to_pixels(b, size)) is not None)


def draw_boxes(
    image: str | Path | Image.Image, boxes: Sequence[Sequence[int]], colour: str = "#e8191f"
) -> Image.Image:
    """A copy of the page with `boxes` (pixels) drawn on it as rectangles."""
    if isinstance(image, Image.Image):
        page = image.convert("RGB")  # always a copy
    else:
        with Image.open(image) as opened:
            page = opened.convert("RGB")
    draw = ImageDraw.Draw(page)
    width = max(2, round(min(page.size) / 200))  # visible on a thumbnail, thin on the page
    for x1, y1, x2, y2 in boxes:
        draw.rectangle((x1, y1, x2 - 1, y2 - 1), outline=colour, width=width)
    return page


class BoxFilter:
    """Removes box markup from text as it streams: text that may be the start of a box is held
    back until it is known, so the chunks joined are exactly `clean` of the whole text."""

    def __init__(self) -> None:
        self.raw = ""  # everything fed so far, markup included
        self.sent = ""  # what was let through

    def feed(self, chunk: str) -> str:
        self.raw += chunk
        return self._send(clean(self.raw[: _safe_end(self.raw)]))

    def flush(self) -> str:
        return self._send(clean(self.raw))

    def _send(self, cleaned: str) -> str:
        if not cleaned.startswith(self.sent):  # cannot happen with `_safe_end`; never resend
            return ""
        new, self.sent = cleaned[len(self.sent) :], cleaned
        return new


def _safe_end(raw: str) -> int:
    """Where `raw` may be cut without cutting a box or a label before one."""
    end = len(raw)
    for marker in MARKERS:  # a marker being written: "<", "<|bo", ...
        for i in range(len(marker) - 1, 0, -1):
            if raw.endswith(marker[:i]):
                end = min(end, len(raw) - i)
                break
    opened = raw.rfind(MARKERS[0])
    if opened >= 0 and MARKERS[1] not in raw[opened:] and len(raw) - opened <= _MARKUP_MAX:
        end = min(end, opened)
    if partial := _OPEN_LABEL.search(raw):
        end = min(end, partial.start())
    for label in LABELS.finditer(raw, max(0, len(raw) - _PLAIN_MAX - 60)):
        tail = raw[label.end() :]
        if len(tail) <= _PLAIN_MAX and _BOX_CHARS.fullmatch(tail):
            end = min(end, label.start())
            break
    return end
