"""Pages to images: pypdfium2 by default (no system dependency, faster), pdf2image on request.

These functions run inside the sandboxed render worker (ingest/worker.py), never in the main
process: a hostile PDF can hang or crash PDFium or poppler. The text layer always comes from
PDFium: poppler's renderer gives images only.
"""

from __future__ import annotations

import math
import shutil
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pypdfium2 as pdfium
from PIL import Image, UnidentifiedImageError

RENDERERS = ("pypdfium2", "pdf2image")
MAX_TEXT_CHARS = 100_000  # a page's text layer beyond this is noise, not content
MIN_EDGE = 8  # pixels; anything smaller is a degenerate render


class RenderError(Exception):
    """A file that cannot be turned into pages; the message says why in plain words."""


class PageError(RenderError):
    """One page that cannot be rendered; the document's other pages still can be."""


@dataclass(frozen=True)
class RenderLimits:
    """Budgets that keep one hostile file from taking the machine down."""

    max_pixels: int = 16_000_000  # per rendered page; ColQwen2 downsizes to ~0.6 MP anyway
    max_edge: int = 8_000  # long edge of a rendered page, pixels
    max_pages: int = 2_000  # pages indexed per document; the rest are reported, not indexed
    image_max_pixels: int = 100_000_000  # input images above this are decompression bombs
    # Per document: rendering stops (the pages so far are kept) once either is spent.
    max_render_seconds: float = 600.0  # time spent waiting for the renderer
    max_image_bytes: int = 500 * 1024 * 1024  # page images written


@dataclass(frozen=True)
class RenderedPage:
    number: int  # 1-based
    image: Image.Image
    text: str


@dataclass(frozen=True)
class OpenedDocument:
    pages: int
    title: str


@dataclass(frozen=True)
class SkippedPage:
    number: int  # 1-based
    reason: str


def _pdfium_reason(exc: Exception) -> str:
    msg = str(exc)
    if "password" in msg.lower():
        return (
            "the PDF is encrypted with a password; give it with `--password FILE=PASSWORD` "
            "or decrypt it (e.g. `qpdf --decrypt`) first"
        )
    if "success" in msg.lower():  # PDFium failed without an error code: no usable pages
        return "the PDF has no pages or a broken page tree"
    if "format" in msg.lower():
        return "the PDF is damaged or not a PDF (PDFium: data format error)"
    return f"PDFium cannot open the PDF ({msg})"


def _has_encrypt_dict(path: Path) -> bool:
    with path.open("rb") as fh:
        return b"/Encrypt" in fh.read()


def open_pdf(path: Path, password: str | None = None) -> pdfium.PdfDocument:
    try:
        return pdfium.PdfDocument(path, password=password)
    except pdfium.PdfiumError as exc:
        says_password = "password" in str(exc).lower()
        # PDFium keeps its last error code across documents and some failures set none, so
        # a "password" error is only believed when the file has an encryption dictionary.
        if says_password and not _has_encrypt_dict(path):
            raise RenderError("the PDF has no pages or a broken page tree") from exc
        if password and says_password:
            raise RenderError("the password given for this PDF is wrong") from exc
        raise RenderError(_pdfium_reason(exc)) from exc


def inspect(
    path: Path, kind: str, password: str | None = None, limits: RenderLimits | None = None
) -> OpenedDocument:
    """Page count and title, or a RenderError saying why the file cannot be read."""
    if kind == "image":
        _load_image(path, limits or RenderLimits())
        return OpenedDocument(pages=1, title=path.stem)
    pdf = open_pdf(path, password)
    try:
        count = len(pdf)
        if count <= 0:
            raise RenderError("the PDF has no pages")
        title = (pdf.get_metadata_dict().get("Title") or "").strip() or path.stem
        return OpenedDocument(pages=count, title=title[:300])
    finally:
        pdf.close()


def _load_image(path: Path, limits: RenderLimits) -> Image.Image:
    Image.MAX_IMAGE_PIXELS = limits.image_max_pixels
    try:
        with warnings.catch_warnings():
            # Pillow only warns between 1x and 2x its limit; we refuse from 1x.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img.load()
                image = img.convert("RGB")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise RenderError(
            f"the image is larger than PAGERAG_IMAGE_MAX_PIXELS ({limits.image_max_pixels:,} "
            f"pixels); refusing to decode it (Pillow's decompression-bomb guard: {exc})"
        ) from exc
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise RenderError(f"the image cannot be decoded ({exc})") from exc
    scale = _scale(image.width, image.height, 1.0, limits)
    if scale < 1.0:
        image = image.resize((round(image.width * scale), round(image.height * scale)))
    return image


def _scale(width: float, height: float, wanted: float, limits: RenderLimits) -> float:
    """The render scale: `wanted`, shrunk so the page fits the pixel and edge budgets."""
    return min(
        wanted,
        limits.max_edge / max(width, height),
        math.sqrt(limits.max_pixels / (width * height)),
    )


class PageSource:
    """An open document whose pages are rendered one by one, in the order of `numbers`.

    `render` raises PageError for a page that cannot be rendered (it failed to load, its box
    is empty or absurd, the renderer returned the wrong size): the caller skips that page.
    Opening raises RenderError for the whole file (not a PDF, damaged, encrypted)."""

    def __init__(
        self,
        path: Path,
        kind: str,
        *,
        renderer: str = "pypdfium2",
        dpi: int = 144,
        skip: set[int] | None = None,
        first: int = 1,
        password: str | None = None,
        limits: RenderLimits | None = None,
    ) -> None:
        self.path, self.renderer, self.dpi = path, renderer, dpi
        self.password = password
        self.limits = limits or RenderLimits()
        skip = skip or set()
        self._pdf: pdfium.PdfDocument | None = None
        if kind == "image":
            count = 1
        else:
            if renderer not in RENDERERS:
                raise RenderError(
                    f"unknown renderer {renderer!r}; set PAGERAG_RENDERER to one of {RENDERERS}"
                )
            self._pdf = open_pdf(path, password)
            count = min(len(self._pdf), self.limits.max_pages)
        self.numbers = [n for n in range(max(first, 1), count + 1) if n not in skip]

    def render(self, number: int) -> RenderedPage:
        if self._pdf is None:
            return RenderedPage(1, _load_image(self.path, self.limits), "")
        try:
            page = self._pdf[number - 1]
        except pdfium.PdfiumError as exc:
            raise PageError(f"page {number} cannot be loaded (broken page tree?)") from exc
        try:
            return _render_page(
                self.path, page, number, self.renderer, self.dpi, self.password, self.limits
            )
        except pdfium.PdfiumError as exc:
            raise PageError(f"page {number} cannot be rendered ({exc})") from exc
        finally:
            page.close()

    def close(self) -> None:
        if self._pdf is not None:
            self._pdf.close()
            self._pdf = None

    def __enter__(self) -> PageSource:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def iter_pages(
    path: Path,
    kind: str,
    *,
    renderer: str = "pypdfium2",
    dpi: int = 144,
    skip: set[int] | None = None,
    password: str | None = None,
    limits: RenderLimits | None = None,
) -> Iterator[RenderedPage]:
    """Render pages one at a time (bounded memory), skipping the page numbers in `skip`.
    A page that cannot be rendered raises PageError; the sandbox's worker skips such pages
    and goes on (see PageSource)."""
    with PageSource(
        path, kind, renderer=renderer, dpi=dpi, skip=skip, password=password, limits=limits
    ) as source:
        for number in source.numbers:
            yield source.render(number)


def _render_page(
    path: Path,
    page: pdfium.PdfPage,
    number: int,
    renderer: str,
    dpi: int,
    password: str | None,
    limits: RenderLimits,
) -> RenderedPage:
    width, height = page.get_size()  # points, rotation applied
    if not (math.isfinite(width) and math.isfinite(height)) or width < 1 or height < 1:
        raise PageError(f"page {number} has an empty or invalid page box ({width} x {height} pt)")
    scale = _scale(width, height, dpi / 72, limits)
    expected = (round(width * scale), round(height * scale))
    if min(expected) < MIN_EDGE:
        raise PageError(
            f"page {number} has an absurd shape ({width:.0f} x {height:.0f} pt): it would "
            f"render to {expected[0]} x {expected[1]} pixels"
        )
    text = _page_text(page)
    if renderer == "pypdfium2":
        image = page.render(scale=scale).to_pil().convert("RGB")
    else:
        image = _render_poppler(path, number, scale * 72, password)
    # Renderers have been seen to return a 1x1 image and succeed; trust the size, not the exit.
    # Poppler and PDFium may also disagree on the scale (e.g. /UserUnit), which is harmless
    # when the shape agrees: such an image is brought back to the budgeted size.
    if image.size != expected:
        shape_ok = abs(image.width / image.height - expected[0] / expected[1]) <= 0.03 * (
            expected[0] / expected[1]
        )
        if min(image.size) < MIN_EDGE or not shape_ok:
            raise PageError(
                f"page {number}: the renderer returned a {image.width} x {image.height} image "
                f"for a page that should render to {expected[0]} x {expected[1]}"
            )
        image = image.resize(expected, Image.Resampling.LANCZOS)
    return RenderedPage(number, image, text)


def _page_text(page: pdfium.PdfPage) -> str:
    textpage = page.get_textpage()
    try:
        # PDFium ends lines with CRLF; keep plain newlines and drop NULs some fonts produce.
        text = textpage.get_text_bounded().replace("\r\n", "\n").replace("\x00", "")
        return text.strip()[:MAX_TEXT_CHARS]
    finally:
        textpage.close()


def _render_poppler(path: Path, number: int, dpi: float, password: str | None) -> Image.Image:
    from pdf2image import convert_from_path
    from pdf2image.exceptions import PDFInfoNotInstalledError, PDFPageCountError

    if shutil.which("pdftoppm") is None:
        raise RenderError(
            "PAGERAG_RENDERER=pdf2image needs poppler's pdftoppm; install poppler-utils "
            "or use the default PAGERAG_RENDERER=pypdfium2"
        )
    try:
        images = convert_from_path(
            path,
            dpi=dpi,  # type: ignore[arg-type]  # typed int; poppler's -r takes a float
            first_page=number,
            last_page=number,
            userpw=password,  # type: ignore[arg-type]  # typed str; None means no password
            use_cropbox=True,  # what PDFium renders and what a reader shows
        )
    except (PDFInfoNotInstalledError, PDFPageCountError) as exc:
        raise PageError(f"poppler cannot render page {number} ({exc})") from exc
    if not images:
        raise PageError(f"poppler returned no image for page {number}")
    return images[0].convert("RGB")
