"""The text channel: BM25 over each page's PDF text layer, shared by both Qdrant adapters.

A page's text becomes a sparse vector (`TEXT`) of term frequencies, weighted by BM25's k, b and
length normalisation; Qdrant applies the IDF part at query time (the vector is declared with the
IDF modifier), so document frequencies stay right as pages come and go. Both vectors come from
qdrant-edge's `Bm25`, the same model Qdrant's server runs for `qdrant/bm25` documents, so Qdrant
Edge, qdrant-client's local mode and a real server tokenize identically, offline (qdrant-client's
local mode would need fastembed to fetch a model from the Hub for this).

Why not Edge's full-text payload index with BM25 scoring (`TextQuery`)? It ranked the labelled
corpus questions lower (docs/QUALITY.md has the figures); in qdrant-client's local mode it only
supports the default tokenizer, so the two backends would rank differently; and `TextQuery`
needs a recent Qdrant server, while sparse vectors with the IDF modifier work since Qdrant 1.10.
"""

from __future__ import annotations

import functools

from qdrant_edge import Bm25, Bm25Config, SparseVector, TokenizerType

TEXT = "bm25"  # sparse vector name: BM25 term weights of the page text, IDF applied by Qdrant

# Written into the index metadata: the stored vectors depend on the tokenisation, so an index
# built with other settings must be re-indexed, not mixed. Change it when `_model` changes.
TEXT_CHANNEL = "bm25:multilingual:ascii-folding:english-stem:k1.2:b0.75:avg256"

# Reciprocal rank fusion constant of hybrid search. Qdrant scores a page by the sum over
# channels of 1 / (k + rank / weight - 1), rank counted from 1, so k=61 is the k=60 of Cormack et
# al. (2009) that most systems use. Qdrant's own default, 2, lets one channel's top hit outvote a
# page that both channels rank highly; with 61 agreement between the channels counts most.
RRF_K = 61


@functools.cache
def _model() -> Bm25:
    # Multilingual tokenizer: splits CJK text into words (the default word tokenizer keeps a
    # Chinese sentence as one token). ASCII folding: "resume" finds "résumé" and back. English
    # stop words and stemmer (the defaults) also fold plural and verb forms.
    return Bm25(Bm25Config(tokenizer=TokenizerType.Multilingual, ascii_folding=True))


def embed_page_text(text: str) -> SparseVector | None:
    """The page's BM25 document vector, or None when the page has no indexable text (scans)."""
    if not text.strip():
        return None
    vector = _model().embed_document(text)
    return vector if vector.indices else None


def embed_query_text(text: str) -> SparseVector | None:
    """The query's BM25 vector (each distinct term weighs 1), or None if only stop words."""
    if not text.strip():
        return None
    vector = _model().embed_query(text)
    return vector if vector.indices else None
