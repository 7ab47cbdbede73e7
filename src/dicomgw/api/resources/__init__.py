"""One module per API noun; each resource takes its collaborators in its constructor."""
