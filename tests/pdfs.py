"""Real PDFs made on the fly with reportlab (a text layer, one line of text per page)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from reportlab.lib.pagesizes import letter
from reportlab.pdfgen import canvas


def make_pdf(path: Path, pages: Sequence[str], *, title: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pdf = canvas.Canvas(str(path), pagesize=letter, invariant=1)  # invariant: same bytes each time
    if title:
        pdf.setTitle(title)
    for i, text in enumerate(pages):
        pdf.setFont("Helvetica-Bold", 28)
        pdf.drawString(72, 700, text)
        pdf.setFont("Helvetica", 12)
        for row in range(12):
            pdf.drawString(72, 640 - 20 * row, f"row {row}: {text} value {(i + 1) * (row + 3)}")
        pdf.rect(300, 100 + 10 * i % 200, 150, 120, fill=i % 2)
        pdf.showPage()
    pdf.save()
    return path
