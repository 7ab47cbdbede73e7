"""Delivering stored instances to peers: the destinations (their table and
secrets), the DIMSE and STOW-RS senders, and transfer syntax conversion. The
forwarder's workers and the C-MOVE SCP both send through here."""
