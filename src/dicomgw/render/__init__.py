"""Rendered images of stored instances (DICOMweb rendered and thumbnails): pixel
data decoded in a pool of child processes with memory and CPU limits, since a
decoder parses what a peer sent."""
