"""The DIMSE services dicom-gw provides (PS3.4, PS3.7): the service provider that
takes each association's messages from the acceptor and dispatches them by
command field, and one module per service class (Verification, Storage; later
Query/Retrieve and Storage Commitment)."""
