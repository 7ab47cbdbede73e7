"""Uploads over HTTP (tus and the upload session API): the upload store, what an
uploaded file becomes (DICOM as received; images and PDFs wrapped; ZIPs expanded),
and its way into ingest, the path a C-STORE takes."""
