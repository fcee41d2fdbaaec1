"""Self-contained HTML pages: the artifact report (``report.html``) and the
pieces other pages reuse (inline SVG charts, embedded thumbnails, the page
template with its galleries).

Every page is one file: images are embedded as ``data:`` URIs, charts are
inline SVG, styles and the small gallery script are inline. Nothing is
fetched from the network, so a page opens from disk, offline.
"""
